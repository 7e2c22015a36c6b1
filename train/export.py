"""The trained model as a Hugging Face directory: sharded safetensors, config, generation
config and tokenizer whose ``chat_template`` (in tokenizer_config.json) renders exactly the
training format, so ``tokenizer.apply_chat_template`` + ``generate`` just work.

``save_hf_dir`` needs no process group (the checkpoint helper's export CLI reuses it);
``export_final`` gathers the FSDP-sharded weights to rank 0 and uploads ``final/``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from typing import Mapping, Optional

import torch

from vicuna_cloud import bucket_keys
from vicuna_cloud.storage import Bucket
from vicuna_cloud.templates import BOS_PREFIXES, get_template, to_messages, with_bos_prefix

FINAL_DIR = bucket_keys.FINAL_DIR
EXPORT_MARKER = "EXPORT.json"  # written last: a final/ without it is incomplete
DEFAULT_SHARD_BYTES = 5 * 1024**3


def _shard(tensors: Mapping[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    return shards


def save_hf_dir(state_dict: Mapping[str, torch.Tensor], config, tokenizer, template_name: str,
                out_dir: str, *, dtype: str = "bf16",
                max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
    """Write a loadable Hugging Face model directory; returns the file names written."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    os.makedirs(out_dir, exist_ok=True)
    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    tied = bool(getattr(config, "tie_word_embeddings", False))
    tensors = {k: v.detach().to("cpu", tdtype).contiguous() for k, v in state_dict.items()
               if not (tied and k == "lm_head.weight")}
    shards = _shard(tensors, max_shard_bytes)
    files: list[str] = []
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, 1):
        name = ("model.safetensors" if len(shards) == 1
                else f"model-{i:05d}-of-{len(shards):05d}.safetensors")
        save_file(shard, os.path.join(out_dir, name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in shard})
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        files.append("model.safetensors.index.json")

    cfg = copy.deepcopy(config)
    cfg.use_cache = True
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.dtype = tdtype
    if getattr(cfg, "_attn_implementation", None) not in (None, "sdpa", "eager"):
        cfg._attn_implementation = "sdpa"
    cfg.save_pretrained(out_dir)
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path) as f:
        saved = json.load(f)
    saved.update(legacy_config_fields(saved))
    with open(cfg_path, "w") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                     else tokenizer.unk_token_id).save_pretrained(out_dir)
    save_tokenizer(tokenizer, template_name, out_dir)
    return sorted(os.listdir(out_dir))


#: Conversations the export renders both ways (training's tokenizer(text) and the served
#: apply_chat_template(tokenize=True)) to pick the template's start (templates.BOS_PREFIXES).
PROBES = (
    [{"from": "human", "value": "Hello!"}, {"from": "gpt", "value": "Hi. How can I help?"}],
    [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"},
     {"from": "human", "value": "Why?\nSay more."}, {"from": "gpt", "value": "  Counting."}],
)


def _chat_ids(tok, messages) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True)
    return list(out["input_ids"] if not isinstance(out, list) else out)


def serving_template(tokenizer, template_name: str) -> str:
    """The template's Jinja with the start (BOS, BOS + space, nothing) under which
    ``apply_chat_template(tokenize=True)``, i.e. a server rendering without adding special
    tokens, yields exactly the ids training saw."""
    tpl = get_template(template_name, eos=tokenizer.eos_token)  # the stop trained
    tok = copy.deepcopy(tokenizer)
    for prefix in BOS_PREFIXES:
        tok.chat_template = with_bos_prefix(tpl.hf_jinja, prefix)
        if all(_chat_ids(tok, to_messages(c)) == list(tokenizer(tpl.render(c).text).input_ids)
               for c in PROBES):
            return tok.chat_template
    raise ValueError(f"no chat template start makes this tokenizer's apply_chat_template ids "
                     f"equal the training ids ({template_name}); cannot export a template "
                     "that serves what was trained")


def _content(token) -> Optional[str]:
    return token.get("content") if isinstance(token, dict) else token


def legacy_config_fields(config: dict) -> dict:
    """config.json keys transformers 4.x (and the serving stacks pinned to it) read, beside
    5.x's ``rope_parameters`` / ``dtype``: without ``rope_scaling`` an older vLLM drops
    v1.5-16k's x4 linear scaling and serves garbage past 4K."""
    rope = config.get("rope_parameters") or {}
    kind = rope.get("rope_type", "default")
    extra = {"rope_theta": float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))}
    if kind == "default":
        extra["rope_scaling"] = None
    else:
        extra["rope_scaling"] = {"type": kind, "rope_type": kind,
                                 **{k: v for k, v in rope.items()
                                    if k not in ("rope_type", "rope_theta")}}
    if config.get("dtype"):
        extra["torch_dtype"] = config["dtype"]
    return extra


def save_tokenizer(tokenizer, template_name: str, out_dir: str) -> None:
    """Tokenizer files with the template's Jinja in tokenizer_config.json (one source),
    readable by transformers 4.x too (``extra_special_tokens`` as a mapping, not a list)."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = serving_template(tokenizer, template_name)
    tok.save_pretrained(out_dir)
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["chat_template"] = tok.chat_template
    extra = cfg.get("extra_special_tokens")
    if isinstance(extra, list):
        # transformers 4.x reads a mapping (name -> token) and fails on a list
        # ("'list' object has no attribute 'keys'"); tokens that are already the named
        # ones (bos/eos/unk/pad) need no entry, the rest stay special via added_tokens.
        named = {_content(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token",
                                                 "pad_token")}
        rest = [t for t in extra if t not in named]
        if rest:
            cfg["additional_special_tokens"] = sorted(set(cfg.get("additional_special_tokens")
                                                          or []) | set(rest))
        del cfg["extra_special_tokens"]
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
    jinja = os.path.join(out_dir, "chat_template.jinja")
    if os.path.exists(jinja):
        os.unlink(jinja)


def gather_full_state_dict(model) -> dict[str, torch.Tensor]:
    """Full, CPU-resident weights on rank 0 ({} elsewhere). Collective: call on all ranks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the fp32 training weights (names, shapes, bytes, in name order): two runs
    end with the same weights exactly when these agree (the demo's preemption proof)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def upload_dir(bucket: Bucket, local_dir: str, prefix: str, *, step: int,
               extra: Optional[dict] = None) -> None:
    """Upload every file, then the marker listing them (readers trust only marked dirs)."""
    listing = {}
    for name in sorted(os.listdir(local_dir)):
        path = os.path.join(local_dir, name)
        bucket.put_file(f"{prefix}/{name}", path)
        listing[name] = os.path.getsize(path)
    bucket.put_bytes(f"{prefix}/{EXPORT_MARKER}", json.dumps(
        {"step": step, "files": listing, "time": time.time(), **(extra or {})},
        indent=2).encode())


def export_final(model, config, tokenizer, spec, bucket: Bucket, *, is_main: bool, step: int,
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 work_dir: Optional[str] = None) -> Optional[str]:
    """Gather, write and upload ``runs/<id>/final/``. Collective; returns its URI on rank 0."""
    state = gather_full_state_dict(model)
    if not is_main:
        return None
    prefix = f"{spec.run_prefix}/{FINAL_DIR}"
    tmp = tempfile.mkdtemp(prefix="vicuna-export-", dir=work_dir)
    try:
        save_hf_dir(state, config, tokenizer, spec.template, tmp, dtype=spec.hyper.dtype,
                    max_shard_bytes=max_shard_bytes)
        bucket.delete(f"{prefix}/{EXPORT_MARKER}")
        upload_dir(bucket, tmp, prefix, step=step,
                   extra={"weights_sha256": weights_sha256(state)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return bucket.child_uri(prefix)
