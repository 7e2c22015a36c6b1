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
from vicuna_cloud.templates import get_template

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
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                     else tokenizer.unk_token_id).save_pretrained(out_dir)
    save_tokenizer(tokenizer, template_name, out_dir)
    return sorted(os.listdir(out_dir))


def save_tokenizer(tokenizer, template_name: str, out_dir: str) -> None:
    """Tokenizer files with the template's Jinja in tokenizer_config.json (one source)."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = get_template(template_name).hf_jinja
    tok.save_pretrained(out_dir)
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["chat_template"] = tok.chat_template
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


def upload_dir(bucket: Bucket, local_dir: str, prefix: str, *, step: int) -> None:
    """Upload every file, then the marker listing them (readers trust only marked dirs)."""
    listing = {}
    for name in sorted(os.listdir(local_dir)):
        path = os.path.join(local_dir, name)
        bucket.put_file(f"{prefix}/{name}", path)
        listing[name] = os.path.getsize(path)
    bucket.put_bytes(f"{prefix}/{EXPORT_MARKER}", json.dumps(
        {"step": step, "files": listing, "time": time.time()}, indent=2).encode())


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
        upload_dir(bucket, tmp, prefix, step=step)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return bucket.child_uri(prefix)
