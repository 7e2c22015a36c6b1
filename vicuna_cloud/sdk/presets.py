"""The presets (size x version) as rows: what `vicuna-cloud presets` shows."""

from __future__ import annotations

from pydantic import BaseModel


class PresetRow(BaseModel):
    preset: str
    version: str
    default: bool
    base_model: str
    template: str
    max_length: int
    rope_scaling: float | None
    accelerators: str
    nodes: int
    gpu_memory_estimate_gib: float
    gpu_memory_gib: float
    fits: bool
    epochs: float
    global_batch_size: int
    learning_rate: float
    published_budget_usd: float | None


def presets() -> list[PresetRow]:
    """Every preset with its hardware, per-GPU memory estimate and recipe values."""
    from vicuna_cloud.recipes import DEFAULT_VERSION, all_presets

    rows = []
    for p in all_presets():
        rows.append(PresetRow(
            preset=p.name, version=p.version, default=DEFAULT_VERSION.get(p.name) == p.version,
            base_model=p.base_model, template=p.template, max_length=p.max_length,
            rope_scaling=p.rope_scaling_factor, accelerators=p.hardware.accelerators,
            nodes=p.hardware.nodes,
            gpu_memory_estimate_gib=round(p.memory_estimate().total_gib, 1),
            gpu_memory_gib=p.hardware.gpu_memory_gib, fits=p.fits(), epochs=p.hyper.epochs,
            global_batch_size=p.hyper.global_batch_size, learning_rate=p.hyper.learning_rate,
            published_budget_usd=p.published_budget_usd))
    return rows
