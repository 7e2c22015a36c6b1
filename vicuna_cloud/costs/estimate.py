"""Before-launch cost estimate: tokens -> FLOPs -> GPU hours -> billed hours -> dollars.

The model, every term stated (all hours are node-hours of wall time billed per node):

1. Trained tokens per epoch come from the dataset manifest (``--data``), or from the
   reference workload of the preset's version (``REFERENCE_*`` below, assumptions listed).
2. Compute tokens: *packed* (ours) = real tokens; *padded* (FastChat-faithful: every
   sample padded to ``max_length``, no packing) = samples x max_length.
3. FLOPs per token = 6 N + 12 L H C  (PaLM, Chowdhery et al. 2022, appendix B, with the
   attention term as the kernel computes it): 6N for the forward and backward matmuls of
   all N parameters (embeddings included, an over-count of ~2% for LLaMA-7B), plus
   12 L H C for attention scores and values (L layers, hidden H), C = the keys each query
   computes against: (S + 1) / 2 for the trainer's causal varlen kernel on CUDA bf16
   (vicuna_cloud/costs/flops.py; the dense-mask path would compute the whole packed row).
   S is the token-weighted mean sample length when packed (attention stays inside each
   conversation), and max_length when padded. The trainer's MFU and bench/gpu_check.py
   count FLOPs the same way, so a measured MFU (--mfu-from) converts back exactly.
   Recomputation under activation checkpointing is not counted (MFU, not HFU).
4. Compute hours = total FLOPs / (GPUs x bf16 peak x MFU). Default MFU 0.40: published
   7B/13B FSDP runs on A100-80GB with flash attention and full activation checkpointing
   sit at 0.4-0.5 MFU; checkpointing recomputes the forward (8N hardware vs 6N model
   FLOPs), so 0.53 of the hardware is 0.40 MFU. Both recipes get the same MFU, so the
   comparison isolates padding.
5. Checkpoint stall per save = 12 N bytes (fp32 weights + two Adam moments) / 2 GB/s
   (a local NVMe write; the upload to the bucket runs in the background). Interval:
   Young's sqrt(2 C / P) for a preemption rate P per hour, else 60 minutes.
6. Setup: ``restart_minutes`` (default 10: boot, dependencies, base-weight download,
   model load and resume) billed once at the start and again after every preemption.
7. Preemptions at rate P per billed hour each cost restart + half an interval of lost
   work: billed H = (compute + checkpoints + setup) / (1 - P (restart + interval / 2)).
8. Node dollars = H x node price x nodes; price = cheapest spot in the catalog
   (pricing.py; never a flagged row).
9. The other lines of the bill (``BillRates``, README "How cost is counted"): disk = H x
   the disk's $/hour (SkyPilot's disk for ``disk_tier: best``, vicuna_cloud.billing) x
   nodes; egress = bytes moved x the inter-region rate for the share of the run after
   the first preemption (EAGER_NEXT_REGION moves the job away from the bucket's region;
   before it the node sits in the bucket's region, free): checkpoint uploads (12 N bytes
   each, plus the final one), one restore download per preemption, the export (2 N); the
   controller VM = (H + its 10 idle minutes) x its on-demand price.
10. Like with like: the padded column is a *padding ablation at equal MFU*, not what
   LMSYS ran. "LMSYS 2023 as run" prices the published hours (7B about 12 h, 13B about
   24 h on 8 A100s, "in one day") at today's catalog, with the MFU those hours imply
   for the padded recipe. The $140/$300 reference is for v0/v1.1 (70K conversations,
   2,048 tokens); other versions are judged against it scaled by their trained tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field, computed_field

from vicuna_cloud.costs.flops import attention_flops_per_token, kernel_for
from vicuna_cloud.errors import ConfigError
from vicuna_cloud.recipes import Preset
from vicuna_cloud.runspec import young_daly_seconds

DEFAULT_MFU = 0.40
DEFAULT_RESTART_MINUTES = 10.0
CHECKPOINT_WRITE_BYTES_PER_S = 2e9
DEFAULT_INTERVAL_MINUTES_NO_PREEMPTION = 60.0
CONTROLLER_IDLE_HOURS = 10.0 / 60.0
EXPORT_BYTES_PER_PARAM = 2.0       # bf16 safetensors
CHECKPOINT_BYTES_PER_PARAM = 12.0  # fp32 weights + two Adam moments

#: LMSYS's 2023 blog: 7B for ~$140 and 13B for ~$300 on 8 A100s with spot instances,
#: "in one day": about 12 and 24 node-hours. Vicuna v0/v1.1 recipe, padded to 2,048.
LMSYS_2023_HOURS = {"7b": 12.0, "13b": 24.0}
REFERENCE_VERSIONS = ("v0", "v1.1")  # the data size the $140/$300 were measured on

# Reference workload for the ShareGPT data (used when no manifest is given).
# Assumption: 3.2 rounds per conversation of 71 prompt + 358 completion LLaMA tokens
# (the ShareGPT statistics of Wang et al. 2023, "How Far Can Camels Go?", Table 1),
# plus ~40 tokens of system prompt and role tags: 1,413 tokens per conversation, of
# which 1,146 (81%) are assistant tokens. Conversations longer than max_length are
# split (as FastChat's split_long_conversation does), so samples ~= conversations;
# assumed token-weighted mean sample length: 1.6 x the mean (a long-tailed length
# distribution), capped at max_length.
REFERENCE_ROUNDS = 3.2
REFERENCE_PROMPT_TOKENS = 71.0
REFERENCE_COMPLETION_TOKENS = 358.0
REFERENCE_OVERHEAD_TOKENS = 40.0
REFERENCE_WEIGHTED_LENGTH_FACTOR = 1.6


#: A figure that may be whole (3 epochs, 2,048 tokens): typed as a number, kept int or
#: float as computed, so ``--json`` prints 3 where a plain float field would print 3.0.
Number = Union[int, float]


class EstimateError(ConfigError):
    pass


@dataclass(frozen=True)
class Workload:
    """What one epoch trains."""

    conversations: int
    samples: int
    tokens_per_epoch: int          # real tokens (packed compute)
    assistant_tokens_per_epoch: Optional[int]
    weighted_sample_length: Number  # token-weighted mean sample length (attention S)
    source: str
    assumptions: tuple[str, ...] = field(default=())

    @property
    def mean_tokens(self) -> float:
        return self.tokens_per_epoch / max(self.samples, 1)


def reference_workload(preset: Preset) -> Workload:
    n = preset.reference_conversations
    per_conv = REFERENCE_ROUNDS * (REFERENCE_PROMPT_TOKENS + REFERENCE_COMPLETION_TOKENS) \
        + REFERENCE_OVERHEAD_TOKENS
    per_sample = min(per_conv, preset.max_length)
    weighted = min(per_sample * REFERENCE_WEIGHTED_LENGTH_FACTOR, preset.max_length)
    return Workload(
        conversations=n, samples=n, tokens_per_epoch=int(round(n * per_sample)),
        assistant_tokens_per_epoch=int(round(n * REFERENCE_ROUNDS * REFERENCE_COMPLETION_TOKENS)),
        weighted_sample_length=weighted,
        source=f"reference workload for Vicuna {preset.version} (no --data manifest)",
        assumptions=(
            f"{n:,} conversations (published size of the {preset.version} training set)",
            f"{per_conv:,.0f} tokens per conversation = {REFERENCE_ROUNDS} rounds x "
            f"({REFERENCE_PROMPT_TOKENS:.0f} prompt + {REFERENCE_COMPLETION_TOKENS:.0f} "
            f"completion) + {REFERENCE_OVERHEAD_TOKENS:.0f} template tokens "
            "(ShareGPT statistics, Wang et al. 2023)",
            "samples = conversations (long ones split at max_length, few in ShareGPT)",
            f"token-weighted mean sample length = {REFERENCE_WEIGHTED_LENGTH_FACTOR} x mean "
            f"= {weighted:,.0f} tokens (attention cost when packed)",
        ),
    )


def _histogram_weighted_length(hist) -> Optional[float]:
    """Token-weighted mean length E[L^2]/E[L] from a length histogram, read defensively.

    Accepts {"edges": [...], "counts": [...]} (or "bins"), a list of
    {"lo"/"min", "hi"/"max", "count"} objects, or a {"lo-hi": count} mapping.
    """
    bins: list[tuple[float, float, float]] = []
    try:
        if isinstance(hist, dict) and "counts" in hist:
            edges = hist.get("edges") or hist.get("bins") or hist.get("bin_edges")
            counts = hist["counts"]
            if edges and len(edges) == len(counts) + 1:
                bins = [(edges[i], edges[i + 1], counts[i]) for i in range(len(counts))]
        elif isinstance(hist, list):
            for b in hist:
                lo = b.get("lo", b.get("min", b.get("start")))
                hi = b.get("hi", b.get("max", b.get("end")))
                bins.append((lo, hi, b["count"]))
        elif isinstance(hist, dict):
            for k, c in hist.items():
                lo, _, hi = str(k).partition("-")
                bins.append((float(lo), float(hi or lo), c))
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
    s1 = s2 = 0.0
    for lo, hi, c in bins:
        try:
            mid = (float(lo) + float(hi)) / 2
            c = float(c)
        except (TypeError, ValueError):
            return None
        s1 += c * mid
        s2 += c * mid * mid
    return s2 / s1 if s1 > 0 else None


def _int_at(d: dict, *paths: str) -> Optional[int]:
    for path in paths:
        cur = d
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if isinstance(cur, dict):
            cur = cur.get("count", cur.get("total"))
        if isinstance(cur, (int, float)) and not isinstance(cur, bool) and cur >= 0:
            return int(cur)
    return None


def workload_from_manifest(manifest, preset: Preset, source: str) -> Workload:
    """Tokens, conversations and length histogram from a dataset manifest (a
    ``data.manifest.Manifest``, or its JSON object as a dict)."""
    from vicuna_cloud.data.manifest import Manifest, ManifestError, parse_manifest

    if isinstance(manifest, dict):
        try:
            manifest = parse_manifest(json.dumps(manifest), source)
        except ManifestError as e:
            raise EstimateError(str(e)) from None
    if not isinstance(manifest, Manifest):
        raise EstimateError(f"{source}: manifest is not a JSON object; give the manifest.json "
                            "written by `vicuna-cloud data prepare`")
    manifest = manifest.to_dict()
    total = _int_at(manifest, "tokens.total", "tokens_total", "total_tokens")
    if not total:
        raise EstimateError(f"{source}: no token count (tokens.total); re-run "
                            "`vicuna-cloud data prepare` to write a complete manifest")
    convs = _int_at(manifest, "conversations", "counts.conversations", "num_conversations")
    samples = _int_at(manifest, "samples", "counts.samples", "num_samples") or convs
    if not samples:
        raise EstimateError(f"{source}: no conversation count (conversations); re-run "
                            "`vicuna-cloud data prepare` to write a complete manifest")
    assistant = _int_at(manifest, "tokens.assistant", "assistant_tokens")
    tok = manifest.get("tokens")
    hist = manifest.get("length_histogram") or (
        tok.get("histogram") if isinstance(tok, dict) else None)
    weighted = _histogram_weighted_length(hist) if hist else None
    assumptions = []
    if weighted is None:
        weighted = min(total / samples * REFERENCE_WEIGHTED_LENGTH_FACTOR, preset.max_length)
        assumptions.append(f"no usable length histogram: token-weighted length assumed "
                           f"{REFERENCE_WEIGHTED_LENGTH_FACTOR} x mean = {weighted:,.0f}")
    return Workload(
        conversations=convs or samples, samples=samples, tokens_per_epoch=total,
        assistant_tokens_per_epoch=assistant,
        weighted_sample_length=min(weighted, preset.max_length), source=source,
        assumptions=tuple(assumptions),
    )


def load_manifest(location: str):
    """(Manifest, where) for --data: a manifest.json path/URI or the dataset holding one."""
    from vicuna_cloud.data.manifest import ManifestError, load_manifest as read

    try:
        return read(location)
    except ManifestError as e:
        raise EstimateError(str(e).replace("give a dataset", "give --data a dataset")) from None


@dataclass(frozen=True)
class Assumptions:
    mfu: float = DEFAULT_MFU
    preemptions_per_hour: float = 1 / 6      # = the run spec's default mtbf_hours of 6
    restart_minutes: float = DEFAULT_RESTART_MINUTES
    checkpoint_interval_minutes: Optional[float] = None   # None: Young's formula
    checkpoint_stall_seconds: Optional[float] = None      # None: 12 N bytes / 2 GB/s

    def validate(self) -> None:
        if not 0 < self.mfu <= 1:
            raise EstimateError(f"--mfu {self.mfu} must be in (0, 1], e.g. 0.4")
        if self.preemptions_per_hour < 0:
            raise EstimateError("--preemptions-per-hour must be >= 0")
        if self.restart_minutes < 0:
            raise EstimateError("--restart-minutes must be >= 0")
        if self.checkpoint_interval_minutes is not None and self.checkpoint_interval_minutes <= 0:
            raise EstimateError("--checkpoint-minutes must be > 0")


def attention_kernel(preset: Preset) -> str:
    """The kernel the trainer runs for this preset (GPU presets: CUDA, their dtype)."""
    return kernel_for("cuda", preset.hyper.dtype)


def flops_per_token(preset: Preset, seq: float, kernel: Optional[str] = None) -> float:
    a = preset.arch
    return 6.0 * a.n_params + attention_flops_per_token(
        kernel or attention_kernel(preset), a.n_layers, a.hidden, seq, row=seq)


def checkpoint_stall_seconds(preset: Preset, a: Assumptions) -> float:
    if a.checkpoint_stall_seconds is not None:
        return a.checkpoint_stall_seconds
    return 12.0 * preset.arch.n_params / CHECKPOINT_WRITE_BYTES_PER_S


def checkpoint_interval_hours(preset: Preset, a: Assumptions) -> float:
    if a.checkpoint_interval_minutes is not None:
        return a.checkpoint_interval_minutes / 60.0
    if a.preemptions_per_hour <= 0:
        return DEFAULT_INTERVAL_MINUTES_NO_PREEMPTION / 60.0
    mtbf_s = 3600.0 / a.preemptions_per_hour
    return young_daly_seconds(checkpoint_stall_seconds(preset, a), mtbf_s) / 3600.0


@dataclass(frozen=True)
class BillRates:
    """The bill's lines beyond the node, per hour or per GB (0 = not counted; a
    controller of None = billed but not priced: shown as unknown, never as $0)."""

    disk_per_node_hour: float = 0.0
    egress_per_gb: float = 0.0        # inter-region, the node's cloud
    controller_per_hour: Optional[float] = 0.0  # VM + its disk
    dataset_bytes: float = 0.0
    sources: tuple[str, ...] = ()


class Estimate(BaseModel):
    """One recipe's figures and bill (``cost --estimate --json`` prints it as ``ours`` and
    ``padded_ablation``; ``verdict`` is computed from the budget)."""

    model_config = ConfigDict(frozen=True)

    mode: str                      # "packed" (ours) | "padded" (FastChat-faithful)
    epochs: Number
    trained_tokens: Number          # real tokens over all epochs
    compute_tokens: Number          # tokens the GPUs compute on (incl. padding)
    attention_seq: Number
    attention_kernel: str
    flops_per_token: float
    total_flops: float
    gpus: int
    peak_tflops: float
    mfu: float
    compute_hours: float
    checkpoint_interval_minutes: float
    checkpoint_stall_seconds: float
    checkpoint_hours: float
    setup_hours: float
    preemption_hours: float
    expected_preemptions: float
    billed_hours: float
    price_per_node_hour: float
    nodes: int
    node_usd: float
    disk_usd: float
    egress_usd: float
    egress_gb: float
    controller_usd: Optional[float]  # None: billed, but no price is known
    cost_usd: float                # every priced line: node + disk + egress + controller
    budget_usd: Optional[float]
    budget_label: str = ""
    unpriced: list[str] = Field(default_factory=list)  # billed lines cost_usd lacks

    def _known_verdict(self, ref: str) -> Optional[str]:
        """With a line unpriced, only "over" is certain (the priced lines alone exceed)."""
        if not self.unpriced or self.budget_usd is None or self.cost_usd > self.budget_usd:
            return None
        return (f"unknown: the priced lines (${self.cost_usd:,.0f}) are within {ref}, "
                f"but {', '.join(self.unpriced)} is not priced")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def verdict(self) -> str:
        if self.budget_usd is None:
            return "no published budget"
        ref = (f"${self.budget_usd:,.0f} ({self.budget_label})" if self.budget_label
               else f"${self.budget_usd:,.0f}")
        unknown = self._known_verdict(ref)
        if unknown:
            return unknown
        if self.budget_label:
            if self.cost_usd <= self.budget_usd:
                return f"within {ref}, ${self.budget_usd - self.cost_usd:,.0f} to spare"
            return f"over {ref} by ${self.cost_usd - self.budget_usd:,.0f}"
        if self.cost_usd <= self.budget_usd:
            return f"within ${self.budget_usd:,.0f} (${self.budget_usd - self.cost_usd:,.0f} to spare)"
        return f"over ${self.budget_usd:,.0f} by ${self.cost_usd - self.budget_usd:,.0f}"

    def to_dict(self) -> dict:
        return self.model_dump()


def reference_budget(preset: Preset, workload: Workload) -> tuple[Optional[float], str]:
    """The published budget this run compares with, and how: as published for v0/v1.1,
    else scaled by trained tokens against the v1.1 reference workload."""
    pub = preset.published_budget_usd
    if pub is None:
        return None, ""
    if preset.version in REFERENCE_VERSIONS:
        return pub, f"LMSYS 2023 for {preset.version}, same data size"
    from vicuna_cloud.recipes import get_preset

    ref = reference_workload(get_preset(preset.size, "v1.1"))
    ratio = workload.tokens_per_epoch * preset.hyper.epochs / (ref.tokens_per_epoch * 3.0)
    return pub * ratio, f"LMSYS 2023 ${pub:,.0f} scaled by tokens x{ratio:.2f}"


def _egress(preset: Preset, rates: BillRates, a: Assumptions, compute_h: float,
            interval_h: float, billed: float, expected_preemptions: float) -> float:
    """GB moved across regions (see the module docstring, term 9)."""
    n = preset.arch.n_params
    ckpt = CHECKPOINT_BYTES_PER_PARAM * n
    ups = (math.floor(compute_h / interval_h) + 1) * ckpt + EXPORT_BYTES_PER_PARAM * n
    downs = expected_preemptions * ckpt + expected_preemptions * rates.dataset_bytes
    # Expected share of the run after the first preemption, which comes at T ~ Exp(P):
    # E[max(0, H - T)] / H = 1 - (1 - exp(-P H)) / (P H).
    ph = a.preemptions_per_hour * billed
    share = 1.0 - (1.0 - math.exp(-ph)) / ph if ph > 0 else 0.0
    return (ups + downs) * share / 1e9


def estimate(preset: Preset, workload: Workload, price_per_node_hour: float,
             assumptions: Assumptions = Assumptions(), mode: str = "packed",
             rates: BillRates = BillRates()) -> Estimate:
    a = assumptions
    a.validate()
    if mode not in ("packed", "padded"):
        raise EstimateError(f"unknown mode {mode!r}")
    epochs = preset.hyper.epochs
    trained = epochs * workload.tokens_per_epoch
    if mode == "packed":
        compute_tokens, seq = trained, workload.weighted_sample_length
    else:
        compute_tokens, seq = epochs * workload.samples * preset.max_length, preset.max_length
    kernel = attention_kernel(preset)
    fpt = flops_per_token(preset, seq, kernel)
    total = fpt * compute_tokens
    hw = preset.hardware
    if hw.bf16_peak_tflops <= 0:
        raise EstimateError(f"preset {preset.name} runs on {hw.accelerator}: no GPU peak to "
                            "estimate from; choose 7b, 13b or 33b")
    compute_h = total / (hw.world_size * hw.bf16_peak_tflops * 1e12 * a.mfu) / 3600.0
    interval_h = checkpoint_interval_hours(preset, a)
    stall_s = checkpoint_stall_seconds(preset, a)
    ckpt_h = math.floor(compute_h / interval_h) * stall_s / 3600.0
    setup_h = a.restart_minutes / 60.0
    loss_per_preemption = a.restart_minutes / 60.0 + interval_h / 2.0
    frac = a.preemptions_per_hour * loss_per_preemption
    if frac >= 1:
        raise EstimateError(
            f"at {a.preemptions_per_hour:g} preemptions/hour each costing "
            f"{loss_per_preemption * 60:.0f} min (restart + half an interval) the run never "
            "finishes; shorten --checkpoint-minutes or --restart-minutes"
        )
    base = compute_h + ckpt_h + setup_h
    billed = base / (1.0 - frac)
    node = billed * price_per_node_hour * hw.nodes
    disk = billed * rates.disk_per_node_hour * hw.nodes
    gb = _egress(preset, rates, a, compute_h, interval_h, billed, a.preemptions_per_hour * billed)
    egress = gb * rates.egress_per_gb
    ctl_rate = rates.controller_per_hour
    controller = None if ctl_rate is None else (
        (billed + CONTROLLER_IDLE_HOURS) * ctl_rate if ctl_rate else 0.0)
    budget, label = reference_budget(preset, workload)
    return Estimate(
        mode=mode, epochs=epochs, trained_tokens=trained, compute_tokens=compute_tokens,
        attention_seq=seq, attention_kernel=kernel, flops_per_token=fpt, total_flops=total, gpus=hw.world_size,
        peak_tflops=hw.bf16_peak_tflops, mfu=a.mfu, compute_hours=compute_h,
        checkpoint_interval_minutes=interval_h * 60.0, checkpoint_stall_seconds=stall_s,
        checkpoint_hours=ckpt_h, setup_hours=setup_h, preemption_hours=billed - base,
        expected_preemptions=a.preemptions_per_hour * billed, billed_hours=billed,
        price_per_node_hour=price_per_node_hour, nodes=hw.nodes, node_usd=node,
        disk_usd=disk, egress_usd=egress, egress_gb=gb, controller_usd=controller,
        cost_usd=node + disk + egress + (controller or 0.0), budget_usd=budget,
        budget_label=label, unpriced=[] if controller is not None else ["the controller"],
    )


class LmsysAsRun(BaseModel):
    """LMSYS's published 2023 node-hours priced at today's catalog."""

    published_hours: float
    implied_mfu_padded: float
    published_budget_usd: Optional[float]
    node_usd: dict[str, float] = Field(description="price column -> node dollars")
    disk_and_controller_usd: Optional[float]  # None: the controller is not priced
    note: str


def lmsys_as_run(preset: Preset, workload: Workload, prices: dict[str, float],
                 rates: BillRates = BillRates()) -> Optional[LmsysAsRun]:
    """The published hours at today's prices, and the MFU they imply for the padded
    recipe (what LMSYS ran: FastChat, padded to max_length, 8 A100s)."""
    hours = LMSYS_2023_HOURS.get(preset.size)
    if hours is None or preset.hardware.bf16_peak_tflops <= 0:
        return None
    from vicuna_cloud.recipes import get_preset

    ref = get_preset(preset.size, "v1.1")  # what LMSYS ran in 2023 (v0/v1.1 data)
    ref_work = reference_workload(ref)
    hw = ref.hardware
    padded_flops = flops_per_token(ref, ref.max_length) * ref.hyper.epochs \
        * ref_work.samples * ref.max_length
    implied = padded_flops / (hours * 3600.0 * hw.world_size * hw.bf16_peak_tflops * 1e12)
    extra = None if rates.controller_per_hour is None else \
        hours * (rates.disk_per_node_hour * hw.nodes + rates.controller_per_hour)
    note = (f"{hours:g} node-hours as LMSYS reported for {preset.size} in 2023 (8 A100s, "
            "'in one day', v0/v1.1 data padded to 2,048), priced at today's catalog")
    if preset.version not in REFERENCE_VERSIONS:
        _, label = reference_budget(preset, workload)
        note += f"; {preset.version} trains more tokens ({label.split('by ')[-1]})"
    return LmsysAsRun(
        published_hours=hours, implied_mfu_padded=round(implied, 4),
        published_budget_usd=preset.published_budget_usd,
        node_usd={k: round(hours * v * hw.nodes, 2) for k, v in prices.items()},
        disk_and_controller_usd=None if extra is None else round(extra, 2), note=note)


def mfu_from_file(path: str) -> tuple[float, str]:
    """A measured MFU: a run's metrics.jsonl (median of the logged ``mfu`` after the first
    tenth of the steps: warm-up and compilation) or a JSON object with an ``mfu`` field
    (bench/gpu_check.py's output; also under "result"/"summary")."""
    from vicuna_cloud.storage import NotFoundError, StorageError, open_bucket

    head, _, name = path.rstrip("/").rpartition("/")
    try:
        raw = open_bucket(head or ".").get_bytes(name)
    except NotFoundError:
        raise EstimateError(f"--mfu-from {path}: no such file; give a run's metrics.jsonl or "
                            "the GPU check's JSON") from None
    except (StorageError, ValueError) as e:
        raise EstimateError(f"--mfu-from {path}: cannot read it ({e})") from None
    text = raw.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        for d in (obj, obj.get("result"), obj.get("summary")):
            v = d.get("mfu") if isinstance(d, dict) else None
            if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1:
                return float(v), f"{path} (mfu field)"
    vals = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        v = rec.get("mfu") if isinstance(rec, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1:
            vals.append(float(v))
    if not vals:
        raise EstimateError(f"--mfu-from {path}: no 'mfu' values between 0 and 1 (a CPU run "
                            "logs none); give a GPU run's metrics.jsonl or the GPU check's JSON")
    import statistics

    kept = vals[len(vals) // 10:] or vals
    return statistics.median(kept), f"{path} (median of {len(kept)} logged steps)"


SENSITIVITY_MFU = (0.30, 0.40, 0.50, 0.60)


class Sensitivity(BaseModel):
    """Cost by MFU (rows) x price (columns); each row maps ``mfu`` and every column label
    to a number."""

    columns: list[str]
    rows: list[dict[str, float]]


def sensitivity(preset: Preset, workload: Workload, prices: dict[str, tuple[float, bool]],
                assumptions: Assumptions, mode: str = "packed",
                rates: BillRates = BillRates()) -> Sensitivity:
    """Cost for each MFU x price column. prices: label -> ($/node-hour, spot?)."""
    mfus = sorted(set(SENSITIVITY_MFU) | {round(assumptions.mfu, 4)})
    rows = []
    for m in mfus:
        row = {"mfu": m}
        for label, (price, spot) in prices.items():
            a = replace(assumptions, mfu=m,
                        preemptions_per_hour=assumptions.preemptions_per_hour if spot else 0.0)
            row[label] = round(estimate(preset, workload, price, a, mode, rates).cost_usd, 2)
        rows.append(row)
    return Sensitivity(columns=list(prices), rows=rows)


#: What bench/gpu_check.py writes (its JSON ``kind``; ``mfu_from_file`` reads its ``mfu``).
GPU_CHECK_KIND = "vicuna-cloud/gpu_check"
