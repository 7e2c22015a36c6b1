"""Shared test set-up.

SkyPilot reads its price catalog from $SKY_RUNTIME_DIR/.sky/catalogs/v8; we point it at a
temporary copy of ../shared/catalog/v8 (read from shared, never copied into the tree)
before anything imports sky. Files without .meta/*.md5 are never re-downloaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
DUMMY_CONVERSATIONS = SHARED_DATA / "sharegpt" / "dummy_conversation.json"
EVAL_PROMPTS = SHARED_DATA / "eval_prompts"
CATALOG_SNAPSHOT = SHARED / "catalog" / "v8"

_SKY_HOME = tempfile.mkdtemp(prefix="vicuna-sky-")
shutil.copytree(CATALOG_SNAPSHOT, os.path.join(_SKY_HOME, ".sky", "catalogs", "v8"))
os.environ["SKY_RUNTIME_DIR"] = _SKY_HOME
# Keep tests away from the developer's real caches and credentials.
os.environ.setdefault("VICUNA_CLOUD_HOME", tempfile.mkdtemp(prefix="vicuna-home-"))
for _secret in ("HF_TOKEN", "WANDB_API_KEY"):
    os.environ.pop(_secret, None)


@pytest.fixture(scope="session")
def sky_runtime_dir() -> str:
    return _SKY_HOME


@pytest.fixture
def local_bucket_uri(tmp_path) -> str:
    return str(tmp_path / "bucket")
