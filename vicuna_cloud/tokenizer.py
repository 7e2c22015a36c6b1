"""Resolve a tokenizer name to something ``transformers.AutoTokenizer`` can load.

``builtin:llama-sp`` is a real LLaMA-format SentencePiece model (32,000 pieces, byte
fallback, ``<s>``/``</s>``) that ships inside the ``mistral-common`` wheel, so local runs
and tests tokenize exactly like a LLaMA-1/2 run without downloading anything.
Torch-free: the data pipeline (control plane) and the trainer both use it.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import lru_cache
from typing import Optional

from platformdirs import user_cache_dir
from vicuna_cloud.errors import ConfigError

BUILTIN_LLAMA_SP = "builtin:llama-sp"


class TokenizerNotFound(ConfigError):
    pass


def _builtin_dir() -> str:
    import mistral_common

    src = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    if not os.path.isfile(src):
        raise TokenizerNotFound(
            f"{BUILTIN_LLAMA_SP}: {src} is missing; reinstall mistral-common (pip install mistral-common)"
        )
    out = os.path.join(user_cache_dir("vicuna-cloud"), "tokenizers", "llama-sp")
    model = os.path.join(out, "tokenizer.model")
    if not os.path.isfile(model) or os.path.getsize(model) != os.path.getsize(src):
        os.makedirs(out, exist_ok=True)
        tmp = model + f".{os.getpid()}.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, model)
    cfg = os.path.join(out, "tokenizer_config.json")
    if not os.path.isfile(cfg):
        tmp = cfg + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                "add_bos_token": True, "add_eos_token": False, "legacy": False,
                "model_max_length": 1_000_000,
            }, f)
        os.replace(tmp, cfg)
    return out


def resolve_tokenizer_path(name: str) -> str:
    """A directory or Hugging Face id for AutoTokenizer.from_pretrained."""
    if name == BUILTIN_LLAMA_SP:
        return _builtin_dir()
    return name


#: The files a tokenizer is made of (config.json too: AutoTokenizer reads its model_type).
TOKENIZER_FILES = ("*.json", "tokenizer*", "*.model", "*.txt", "*.tiktoken")


def _local_tokenizer_dir(name: str) -> str:
    """A directory for ``name``: a hub id is fetched here (vicuna_cloud.hub) so that an
    outage is HubUnavailable (transient), not a 'cannot load tokenizer' config error."""
    path = resolve_tokenizer_path(name)
    if os.path.isdir(path):
        return path
    from vicuna_cloud.hub import HubInputError, snapshot

    try:
        return snapshot(path, TOKENIZER_FILES, what="tokenizer")
    except HubInputError as e:
        raise TokenizerNotFound(f"cannot load tokenizer {name!r}: {e} (or "
                                f"{BUILTIN_LLAMA_SP}, no download)") from None


@lru_cache(maxsize=4)
def load_tokenizer(name: str):
    """Load a fast tokenizer (offsets are needed for loss masks). Errors say how to fix."""
    from transformers import AutoTokenizer

    path = _local_tokenizer_dir(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise TokenizerNotFound(
            f"cannot load tokenizer {name!r}: {str(e).splitlines()[0]}. Give a local directory "
            f"with tokenizer files, a Hugging Face id (set HF_TOKEN for gated models), or "
            f"{BUILTIN_LLAMA_SP}"
        ) from None
    if not getattr(tok, "is_fast", False):
        raise TokenizerNotFound(f"tokenizer {name!r} is not a fast tokenizer; offsets are required")
    return tok


def _token_text(value) -> Optional[str]:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def eos_token(name: str) -> str:
    """The tokenizer's EOS token text (the Vicuna v1.1 reply stop for this base model).

    Read from the directory's tokenizer_config.json / special_tokens_map.json when it has
    one (no transformers import: the data pipeline is light), else from the loaded
    tokenizer (a Hugging Face id)."""
    path = resolve_tokenizer_path(name)
    if os.path.isdir(path):
        for fname in ("tokenizer_config.json", "special_tokens_map.json"):
            try:
                with open(os.path.join(path, fname), encoding="utf-8") as f:
                    tok = _token_text(json.load(f).get("eos_token"))
            except (OSError, ValueError, AttributeError):
                continue
            if tok:
                return tok
    tok = load_tokenizer(name).eos_token
    if not tok:
        raise TokenizerNotFound(f"tokenizer {name!r} has no EOS token; the chat template's "
                                "reply stop is the tokenizer's EOS")
    return tok
