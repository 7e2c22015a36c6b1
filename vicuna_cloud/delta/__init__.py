"""Delta weights (target minus base, exact and streaming); see weights.py."""

from vicuna_cloud.delta.weights import (
    MANIFEST, DeltaError, DeltaResult, WrongBase, apply_delta, load_manifest, make_delta,
)

__all__ = ["MANIFEST", "DeltaError", "DeltaResult", "WrongBase", "apply_delta",
           "load_manifest", "make_delta"]
