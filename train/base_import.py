"""``python -m train.base_import SRC OUT``: a base model as a safetensors directory.

The data-plane half of ``vicuna-cloud base import`` (the control plane never imports
torch): SRC is a ``.gguf`` file (transformers dequantizes it to fp32 with the ``gguf``
package) or a Hugging Face model directory (``.bin`` or ``.safetensors``). OUT receives
``model.safetensors`` (fp32, so the trainer's sharded loader reads exactly what
transformers itself would compute with), ``config.json``, ``generation_config.json`` and
the fast tokenizer. The caller (vicuna_cloud.base_models) writes into a temp directory
and renames it, so OUT is either whole or absent.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys

#: Architectures whose decoder layers live at ``model.model.layers`` (what
#: train.parallel.apply_fsdp shards) and whose weights use the LLaMA layout.
SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


class ImportFailed(ValueError):
    pass


def load(src: str):
    """(model, tokenizer) from a GGUF file or a model directory, in fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isfile(src):
        if not src.endswith(".gguf"):
            raise ImportFailed(f"{src}: not a .gguf file; give a .gguf file or a Hugging Face "
                               "model directory")
        where, name = os.path.dirname(os.path.abspath(src)), os.path.basename(src)
        kw = {"gguf_file": name}
    else:
        where, kw = src, {}
    try:
        with _gguf_parsed_once() if kw else contextlib.nullcontext():
            tok = AutoTokenizer.from_pretrained(where, **kw)
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw)
    except (OSError, ValueError, ImportError) as e:
        raise ImportFailed(f"cannot load {src}: {str(e).splitlines()[0]}") from None
    arch = type(model).__name__
    if arch not in SUPPORTED:
        raise ImportFailed(f"{src} is a {arch}; the trainer fine-tunes {', '.join(SUPPORTED)}")
    if not getattr(tok, "is_fast", False):
        raise ImportFailed(f"{src}: its tokenizer is not a fast tokenizer (offsets are needed "
                           "for the loss mask)")
    _special_tokens_from_config(tok, model.config)
    if tok.eos_token is None:
        raise ImportFailed(f"{src}: its tokenizer has no EOS token; the chat template's reply "
                           "stop is the base model's EOS")
    return model, tok


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers reads a GGUF file three times (tokenizer, config, weights), and every
    ``gguf.GGUFReader`` parses all metadata again, the 49K-token vocabulary and its merges
    included, in Python; ``gguf.get_tensor_name_map`` is rebuilt for every module. Both
    are pure functions of their arguments: here each runs once per conversion (measured
    on SmolLM2-135M, 2 cores: `vicuna-cloud base import builtin:smollm2-135m`, cold)."""
    try:
        import gguf
    except ImportError:  # transformers says what to install
        yield
        return
    originals = {name: getattr(gguf, name, None) for name in ("GGUFReader", "get_tensor_name_map")}
    cached = {name: functools.lru_cache(maxsize=None)(fn) for name, fn in originals.items() if fn}
    for name, fn in cached.items():
        setattr(gguf, name, fn)
    try:
        yield
    finally:
        for name, fn in originals.items():
            if fn is not None:
                setattr(gguf, name, fn)


def _special_tokens_from_config(tok, config) -> None:
    """The model config's BOS/EOS/PAD ids win over the tokenizer's.

    transformers 5.x's GGUF tokenizer conversion names SmolLM2's EOS ``<|im_start|>`` (id 1)
    while the GGUF metadata and the converted config say id 2, ``<|im_end|>``, the token
    the instruct model ends its turns with; the reply stop we train is the EOS, so it must
    be the right one."""
    for role in ("bos", "eos", "pad"):
        want = getattr(config, f"{role}_token_id", None)
        if isinstance(want, list):
            want = want[0] if want else None
        if not isinstance(want, int) or not 0 <= want < len(tok):
            continue
        if getattr(tok, f"{role}_token_id") != want:
            setattr(tok, f"{role}_token", tok.convert_ids_to_tokens(want))


def convert(src: str, out: str) -> dict:
    """Write the directory; returns a summary (architecture, parameters, EOS)."""
    from safetensors.torch import save_file

    model, tok = load(src)
    os.makedirs(out, exist_ok=True)
    # save_pretrained refuses a GGUF-loaded model ("quantized ... not serializable"): the
    # weights are plain fp32 tensors by now, so write them and a config without the
    # quantization entry ourselves. Tied weights are stored once (the embedding).
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.use_cache = True
    config.architectures = [type(model).__name__]
    config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    tok.save_pretrained(out)
    return {"architecture": type(model).__name__,
            "n_params": sum(p.numel() for p in model.parameters()),
            "n_layers": model.config.num_hidden_layers,
            "context": getattr(model.config, "max_position_embeddings", None),
            "eos_token": tok.eos_token, "bos_token": tok.bos_token,
            "vocab": len(tok)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.base_import", description=__doc__)
    p.add_argument("src")
    p.add_argument("out")
    a = p.parse_args(argv)
    try:
        summary = convert(a.src, a.out)
    except ImportFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
