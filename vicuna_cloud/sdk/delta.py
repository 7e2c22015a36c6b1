"""Delta weights (vicuna_cloud.delta): ``sdk.make_delta(base, target, out)`` and
``sdk.apply_delta(base, delta, out)`` -> ``DeltaResult``; a wrong base raises ``WrongBase``
(a ConfigError) and leaves nothing behind."""

from vicuna_cloud.delta import DeltaResult, WrongBase, apply_delta, make_delta

__all__ = ["DeltaResult", "WrongBase", "apply_delta", "make_delta"]
