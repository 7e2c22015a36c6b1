"""Building the network: a seeded LLaMA from a config, or a base model from safetensors.

Base models are built on the meta device, sharded with FSDP2, materialised empty, and then
each rank reads only *its own rows* of every tensor from the safetensors files (memory
mapped, ``get_slice``). No rank ever holds a full copy, so a 13B model on 8 GPUs costs the
node about one model's size in page cache, not 8 copies in RSS. bench/load_memory.py
measures it against the naive full load.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch

from vicuna_cloud.runspec import RunSpec

from train.inputs import ConfigError


def attn_implementation(device: torch.device) -> str:
    """The registered packed-row attention (train/attention.py) on every device: flash
    varlen over host-built cu_seqlens on CUDA (FlexAttention for fp32), the same op's CPU
    kernel on CPU. Never transformers' dense [T, T] packed mask."""
    from train import attention

    attention.register()
    return attention.IMPL


def apply_rope_scaling(config, factor: Optional[float]) -> None:
    """Linear RoPE scaling (positions divided by ``factor``), as Vicuna v1.5-16k did."""
    if not factor or factor == 1.0:
        return
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.setdefault("rope_theta", 10000.0)
    params.update(rope_type="linear", factor=float(factor))
    config.rope_parameters = params


def resolve_model_dir(name: str, *, download: bool, weights: bool = True) -> str:
    """A local directory for a Hugging Face id or path (download only on one rank);
    ``weights=False`` (a resume) fetches the config and tokenizer files only. A hub outage
    raises HubUnavailable (exit 69, retried); a wrong id or a gated repo without a token
    is a ConfigError (exit 78)."""
    if os.path.isdir(name):
        return name
    from vicuna_cloud.hub import HubInputError, snapshot

    patterns = ["*.json", "tokenizer*"] + (["*.safetensors"] if weights else [])
    try:
        return snapshot(name, patterns, download=download, what="base model")
    except HubInputError as e:
        raise ConfigError(str(e)) from None


def build_config(spec: RunSpec, model_dir: Optional[str]):
    from transformers import AutoConfig, LlamaConfig

    if spec.model.base_model.startswith("config:"):
        if not spec.model.architecture:
            raise ConfigError("base_model 'config:...' needs model.architecture in the run spec")
        config = LlamaConfig(**spec.model.architecture)
    else:
        config = AutoConfig.from_pretrained(model_dir)
    apply_rope_scaling(config, spec.rope_scaling_factor)
    config.use_cache = False
    return config


def build_model(config, *, seed: int, meta: bool, device: torch.device):
    """The bare model: seeded random init on CPU, or on the meta device to be loaded later."""
    from transformers import AutoModelForCausalLM

    config._attn_implementation = attn_implementation(device)
    # fp32 master weights always (a bf16 base checkpoint would otherwise set bf16 params);
    # FSDP's MixedPrecisionPolicy computes in bf16.
    if meta:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _weight_files(model_dir: str) -> list[str]:
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(model_dir, n) for n in names]
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    raise ConfigError(f"{model_dir} has no safetensors weights; convert the checkpoint with "
                      "transformers' save_pretrained(safe_serialization=True)")


@torch.no_grad()
def load_sharded_weights(model, model_dir: str, device: torch.device) -> None:
    """Fill FSDP2-sharded (DTensor) parameters from safetensors, reading local rows only."""
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    params = dict(model.named_parameters())
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    loaded: set[str] = set()
    for path in _weight_files(model_dir):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                if name not in params:
                    continue  # e.g. rotary inv_freq in old checkpoints
                p = params[name]
                sl = f.get_slice(name)
                if isinstance(p, DTensor):
                    local = p.to_local()
                    shape, offset = compute_local_shape_and_global_offset(
                        p.shape, p.device_mesh, p.placements)
                    if local.numel():
                        index = tuple(slice(o, o + s) for o, s in zip(offset, shape))
                        local.copy_(sl[index])
                else:
                    p.copy_(sl[:])
                loaded.add(name)
    missing = [n for n in params if n not in loaded and not (tied and n == "lm_head.weight")]
    if missing:
        raise ConfigError(f"{model_dir} lacks {len(missing)} weights the model needs "
                          f"(first: {missing[0]}); is it a LLaMA-family checkpoint?")
    reset_rotary(model, device)


def reset_rotary(model, device: torch.device) -> None:
    """Recompute RoPE buffers (non-persistent, so to_empty() left garbage in them)."""
    for mod in list(model.modules()):
        if hasattr(mod, "rotary_emb"):
            cls = type(mod.rotary_emb)
            with torch.device(device):
                mod.rotary_emb = cls(model.config)


def count_params(config) -> tuple[int, int]:
    """(total parameters, parameters that take part in matmuls: all but the input embedding)."""
    h, L, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * config.intermediate_size + 2 * h
    embed = v * h
    head = 0 if config.tie_word_embeddings else v * h
    total = embed + head + L * per_layer + h
    return total, total - embed + (embed if config.tie_word_embeddings else 0)
