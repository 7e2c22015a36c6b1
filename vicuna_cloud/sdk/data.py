"""Training data: prepare raw ShareGPT dumps, upload the result content-addressed, and
look at the loss mask of a few conversations. Thin on purpose: the pipeline
(vicuna_cloud.data) already speaks in typed options and results and raises DataError."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from vicuna_cloud.data.loss_mask_view import InspectedConversation, inspect_file
from vicuna_cloud.data.pipeline import PrepareOptions, PrepareResult, prepare
from vicuna_cloud.data.upload import UploadResult, upload_dataset

__all__ = ["PrepareOptions", "PrepareResult", "UploadResult", "inspect_data", "prepare_data",
           "upload_data"]


def prepare_data(raw: Sequence[str], out: str, opts: PrepareOptions = PrepareOptions(), *,
                 force: bool = False,
                 progress: Optional[Callable[[int, int, int], None]] = None) -> PrepareResult:
    """Raw dumps to ``out/train.jsonl`` + ``manifest.json``; ``progress(bytes_done,
    bytes_total, conversations)`` as it reads."""
    return prepare(list(raw), out, opts, force=force, progress=progress)


def upload_data(directory: str, uri: str, *, progress: Optional[Callable[[int], None]] = None,
                on_size: Optional[Callable[[int], None]] = None) -> UploadResult:
    """Upload to ``uri/datasets/<sha256>/``, verified; a no-op when already there. The
    result's ``uri`` is what a launch takes as its dataset."""
    return upload_dataset(directory, uri, progress=progress, on_size=on_size)


def inspect_data(path: str, n: int = 3, tokenizer: str = "builtin:llama-sp",
                 template: str = "vicuna_v1.1") -> list[InspectedConversation]:
    """The first ``n`` conversations rendered, with each token's trained/masked flag."""
    return inspect_file(path, n=n, tokenizer=tokenizer, template=template)
