"""Loss curves of a run: a PNG (matplotlib) or a terminal chart (plotext).

Read from the bucket, so it works for a local run and for a cloud run alike, while it
trains or after: metrics.jsonl gives train loss, lr and tokens/s per step (and eval loss
where the trainer logged it); the ledger gives the segments (one per VM) and so where
each preemption happened. A step trained twice (work lost to a preemption and redone)
keeps its later value, which is the one the model carries.

matplotlib and plotext are imported inside the render functions: `vicuna-cloud --help`
must not pay for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from vicuna_cloud import bucket_keys
from vicuna_cloud.run_progress import jsonl_records
from vicuna_cloud.storage import Bucket, NotFoundError

_EVAL_KEYS = ("eval_loss", "val_loss", "validation_loss")


@dataclass
class PlotData:
    """Series by optimizer step, plus where segments begin and end."""

    run_id: str
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    segments: list[tuple[int, int]] = field(default_factory=list)  # (first_step, last_step)
    preemptions: list[int] = field(default_factory=list)           # step each one hit at
    total_steps: Optional[int] = None

    @property
    def empty(self) -> bool:
        return not self.steps and not self.eval_steps


def _num(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _eval_value(rec: dict) -> Optional[float]:
    for k in _EVAL_KEYS:
        if _num(rec.get(k)) is not None:
            return float(rec[k])
    if rec.get("event") == "eval" and _num(rec.get("loss")) is not None:
        return float(rec["loss"])
    return None


def plot_data(bucket: Bucket, run_id: str) -> PlotData:
    """What there is to plot for ``run_id``; raises NotFoundError when nothing is there."""
    from vicuna_cloud.ledger import read_ledger

    data = PlotData(run_id)
    try:
        raw = bucket.get_bytes(bucket_keys.metrics(run_id))
    except NotFoundError:
        raw = b""
    by_step: dict[int, dict] = {}
    evals: dict[int, float] = {}
    for rec in jsonl_records(raw):
        step = rec.get("step")
        if not isinstance(step, int):
            continue
        ev = _eval_value(rec)
        if ev is not None:
            evals[step] = ev
        if rec.get("event") == "start" and isinstance(rec.get("total_steps"), int):
            data.total_steps = rec["total_steps"]
        if "event" not in rec and _num(rec.get("loss")) is not None:
            by_step[step] = rec  # a redone step: the later line wins
    for step in sorted(by_step):
        rec = by_step[step]
        data.steps.append(step)
        data.loss.append(float(rec["loss"]))
        data.lr.append(_num(rec.get("lr")) or 0.0)
        data.tokens_per_s.append(_num(rec.get("tokens_per_s")) or 0.0)
    data.eval_steps = sorted(evals)
    data.eval_loss = [evals[s] for s in data.eval_steps]
    segs = read_ledger(bucket, run_id).segments
    for i, s in enumerate(segs):
        data.segments.append((s.first_step, max(s.first_step, s.last_step)))
        if i + 1 < len(segs) and s.reason != "completed":
            data.preemptions.append(s.last_step)
        data.total_steps = data.total_steps or s.total_steps
    if data.empty and not segs:
        raise NotFoundError(f"{bucket.child_uri(bucket_keys.metrics(run_id))} has no step "
                            "logged yet (and the run has no ledger); nothing to plot")
    return data


def _title(d: PlotData) -> str:
    parts = [d.run_id]
    if d.steps:
        parts.append(f"step {d.steps[-1]}" + (f"/{d.total_steps}" if d.total_steps else ""))
    if d.preemptions:
        parts.append(f"{len(d.preemptions)} preemption(s)")
    return ", ".join(parts)


def render_png(d: PlotData, out: str, *, dpi: int = 100) -> str:
    """Three panels sharing the step axis: loss (train, eval), lr, tokens/s. Returns ``out``."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display needed, never a GUI window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(9, 7.5), dpi=dpi,
                             gridspec_kw={"height_ratios": [3, 1.2, 1.2]})
    try:
        ax_loss, ax_lr, ax_tps = axes
        ax_loss.plot(d.steps, d.loss, color="tab:blue", lw=1.4, marker=".", label="train loss")
        if d.eval_steps:
            ax_loss.plot(d.eval_steps, d.eval_loss, color="tab:orange", lw=1.6, marker="o",
                         label="eval loss")
        ax_lr.plot(d.steps, d.lr, color="tab:green", lw=1.2)
        ax_tps.plot(d.steps, d.tokens_per_s, color="tab:purple", lw=1.2)
        for ax in axes:
            for i, (a, b) in enumerate(d.segments):
                if i % 2 == 1:
                    ax.axvspan(a, max(b, a + 0.5), color="0.85", alpha=0.5, lw=0)
            for j, p in enumerate(d.preemptions):
                ax.axvline(p, color="tab:red", ls="--", lw=1,
                           label="preemption" if (ax is ax_loss and j == 0) else None)
            ax.grid(alpha=0.3)
        ax_loss.set_ylabel("loss")
        ax_lr.set_ylabel("lr")
        ax_tps.set_ylabel("tokens/s")
        ax_tps.set_xlabel("optimizer step (shaded: alternate segments, one per VM)")
        ax_loss.legend(loc="upper right")
        ax_loss.set_title(_title(d))
        fig.tight_layout()
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out


def render_terminal(d: PlotData, *, width: int = 80, height: int = 22,
                    color: bool = True) -> str:
    """The loss curve (and eval loss) as text, preemptions as vertical lines; tokens/s
    underneath. ``color=False`` for a pipe or a file. Returns the chart; prints nothing."""
    import plotext as plt

    plt.clear_figure()
    plt.theme("clear")  # the terminal's own background, light or dark
    plt.plotsize(width, height)
    plt.subplots(2, 1)
    top = plt.subplot(1, 1)
    top.plotsize(width, max(8, height * 2 // 3))
    if d.steps:
        plt.plot(d.steps, d.loss, label="train loss", marker="braille")
    if d.eval_steps:
        plt.plot(d.eval_steps, d.eval_loss, label="eval loss", marker="dot")
    for p in d.preemptions:
        plt.vline(p, "red")
    plt.title(_title(d))
    plt.ylabel("loss")
    bottom = plt.subplot(2, 1)
    bottom.plotsize(width, max(6, height - height * 2 // 3))
    if d.steps:
        plt.plot(d.steps, d.tokens_per_s, label="tokens/s", marker="braille")
    for p in d.preemptions:
        plt.vline(p, "red")
    plt.xlabel("step" + (" (red: preemptions)" if d.preemptions else ""))
    text = plt.build()
    plt.clear_figure()
    return text if color else plt.uncolorize(text)
