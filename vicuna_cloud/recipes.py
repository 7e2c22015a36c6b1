"""Vicuna presets: model size x release version, with where every fixed value comes from.

Sources (facts, not code):
- [blog]  LMSYS, "Vicuna: An Open-Source Chatbot Impressing GPT-4 with 90% ChatGPT Quality"
          (2023-03-30): ~70K ShareGPT conversations, max length 2048, gradient checkpointing,
          flash attention, SkyPilot managed spot jobs, ~$140 (7B) and ~$300 (13B).
- [fc]    FastChat README "Fine-tuning" and scripts/train_vicuna_*.sh: 3 epochs, lr 2e-5,
          cosine schedule, warmup_ratio 0.03, weight_decay 0, bf16, FSDP full_shard,
          global batch 128 (e.g. 4 GPUs x 2 x 16 accumulation, 8 x 4 x 4).
- [v13]   FastChat docs/vicuna_weights_version.md: v1.3 trained on ~125K conversations,
          LLaMA-1 base, 7B/13B/33B; v1.1 changed the separator to ``</s>``; v0 used ``###``.
- [v15]   Same page: v1.5 fine-tuned from Llama 2 with 4K context; v1.5-16k uses linear RoPE
          scaling to 16K (factor 4 over Llama 2's 4,096).
- [llama] Parameter counts from the LLaMA / Llama 2 model cards (6.74B, 13.0B, 32.5B).

Memory estimate (per GPU, FSDP full shard, AdamW, bf16 compute with fp32 master weights):
fp32 params 4N + fp32 grads 4N + Adam moments 8N = 16N bytes sharded over all GPUs, plus
one layer's gathered bf16 weights (prefetch x2), plus checkpointed activations (one hidden
state per layer per token in bf16, and one layer's full activations recomputed), plus a
fixed allowance for the CUDA context, NCCL buffers and the allocator's fragmentation.
33B: 16 x 32.5e9 / 8 = 65 GB (60.6 GiB) of sharded state alone on one 8-GPU node; with
activations and overhead the estimate is ~75 GiB of an 80 GB card, under 5 GiB of headroom,
too thin for allocator fragmentation and the longest packed micro-batches. The 33B preset
therefore uses 2 nodes (16 GPUs: ~45 GiB per GPU) rather than CPU optimizer offload, which
would cost far more in step time than the second node costs in dollars of wasted memory.

Shard size (``shard_size_for``, the estimate's divisor and the trainer's FSDP mesh alike):
the smallest group of whole nodes whose per-GPU estimate leaves ``SHARD_HEADROOM`` of the
card free; the other nodes hold replicas (HSDP). 7B and 13B shard over their node's 8 GPUs;
33B on 2 nodes shards over all 16 (8 would leave under 5 GiB free).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from vicuna_cloud.runspec import Hyperparameters, rope_factor_for
from vicuna_cloud.errors import ConfigError

GIB = 1024**3


class RecipeError(ConfigError):
    """Unknown preset or version, or an impossible combination."""


@dataclass(frozen=True)
class Architecture:
    """What the estimators need to know about a LLaMA-family network."""

    n_params: int
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    vocab: int
    context: int

    def as_llama_config(self) -> dict:
        return {
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.context,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
        }


LLAMA1 = {
    "7b": Architecture(6_738_415_616, 32, 4096, 11008, 32, 32000, 2048),
    "13b": Architecture(13_015_864_320, 40, 5120, 13824, 40, 32000, 2048),
    "33b": Architecture(32_528_943_616, 60, 6656, 17920, 52, 32000, 2048),
}
LLAMA2 = {
    "7b": Architecture(6_738_415_616, 32, 4096, 11008, 32, 32000, 4096),
    "13b": Architecture(13_015_864_320, 40, 5120, 13824, 40, 32000, 4096),
}
TINY = Architecture(
    n_params=4_196_672, n_layers=2, hidden=64, intermediate=176, n_heads=4,
    vocab=32000, context=512,
)

#: SmolLM2-135M-Instruct (Apache-2.0): a real pretrained LlamaForCausalLM small enough to
#: fine-tune on a laptop CPU (GQA: 3 KV heads; tied embeddings; BPE, EOS <|im_end|>).
SMOLLM2_135M = Architecture(
    n_params=134_515_008, n_layers=30, hidden=576, intermediate=1536, n_heads=9,
    vocab=49152, context=8192,
)
SMALL_BASE = "builtin:smollm2-135m"  # vicuna_cloud/base_models.py: fetched and converted once

BASE_MODELS = {
    ("llama1", "7b"): "huggyllama/llama-7b",
    ("llama1", "13b"): "huggyllama/llama-13b",
    ("llama1", "33b"): "huggyllama/llama-30b",
    ("llama2", "7b"): "meta-llama/Llama-2-7b-hf",
    ("llama2", "13b"): "meta-llama/Llama-2-13b-hf",
}


@dataclass(frozen=True)
class Version:
    name: str
    base_family: str  # llama1 | llama2
    template: str
    max_length: int
    sizes: tuple[str, ...]
    reference_conversations: int  # size of the published training set
    note: str


VERSIONS: dict[str, Version] = {
    "v0": Version("v0", "llama1", "vicuna_v0", 2048, ("7b", "13b"), 70_000,
                  "March 2023 release, '###' separator [blog][v13]"),
    "v1.1": Version("v1.1", "llama1", "vicuna_v1.1", 2048, ("7b", "13b"), 70_000,
                    "'</s>' separator, ~70K conversations [v13]"),
    "v1.3": Version("v1.3", "llama1", "vicuna_v1.1", 2048, ("7b", "13b", "33b"), 125_000,
                    "~125K conversations, adds 33B [v13]"),
    "v1.5": Version("v1.5", "llama2", "vicuna_v1.1", 4096, ("7b", "13b"), 125_000,
                    "Llama 2 base, 4K context [v15]"),
    "v1.5-16k": Version("v1.5-16k", "llama2", "vicuna_v1.1", 16384, ("7b", "13b"), 125_000,
                        "Llama 2 base, linear RoPE scaling x4 to 16K [v15]"),
}
DEFAULT_VERSION = {"7b": "v1.5", "13b": "v1.5", "33b": "v1.3", "tiny": "v1.1", "small": "v1.1"}
SIZES = ("7b", "13b", "33b")
LOCAL_PRESETS = ("tiny", "small")
PRESET_NAMES = (*LOCAL_PRESETS, *SIZES)

# Budgets the 2023 blog post reported for spot training on 8x A100-80GB [blog].
PUBLISHED_BUDGET_USD = {"7b": 140.0, "13b": 300.0}


@dataclass(frozen=True)
class Hardware:
    accelerator: str  # SkyPilot accelerator name
    gpus_per_node: int
    nodes: int
    gpu_memory_gib: float
    bf16_peak_tflops: float  # dense, per GPU

    @property
    def accelerators(self) -> str:
        return f"{self.accelerator}:{self.gpus_per_node}"

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes


GPU_SPECS = {
    # name: (memory GiB, dense bf16 peak TFLOP/s) from the vendors' data sheets.
    "A100-80GB": (80.0, 312.0),
    "A100": (40.0, 312.0),
    "H100": (80.0, 989.0),
    "H200": (141.0, 989.0),
    "cpu": (0.0, 0.0),
}


def hardware_for(accelerator: str, gpus_per_node: int, nodes: int) -> Hardware:
    if accelerator not in GPU_SPECS:
        raise RecipeError(
            f"unknown accelerator {accelerator!r}; known: {', '.join(GPU_SPECS)}"
        )
    mem, peak = GPU_SPECS[accelerator]
    return Hardware(accelerator, gpus_per_node, nodes, mem, peak)


@dataclass(frozen=True)
class MemoryEstimate:
    sharded_state_gib: float
    gathered_layer_gib: float
    activations_gib: float
    overhead_gib: float

    @property
    def total_gib(self) -> float:
        return (self.sharded_state_gib + self.gathered_layer_gib + self.activations_gib
                + self.overhead_gib)


@dataclass(frozen=True)
class Preset:
    name: str
    size: str
    version: str
    base_model: str
    tokenizer: str
    template: str
    arch: Architecture
    hardware: Hardware
    #: The recipe's training values: a run spec starts from exactly these
    #: (``run_store.spec_from_preset``: ``hyper.model_copy(update=...)``).
    hyper: Hyperparameters = Hyperparameters()
    reference_conversations: int = 70_000
    disk_size_gb: int = 512
    #: Local demo knobs (small: max_raw_bytes, eval_fraction, checkpoint_steps).
    extra: dict = field(default_factory=dict)

    @property
    def max_length(self) -> int:
        """Shorthand used by the data pipeline and the estimators."""
        return self.hyper.max_length

    @property
    def rope_scaling_factor(self) -> Optional[float]:
        return rope_factor_for(self.hyper.max_length, self.arch.context)

    @property
    def published_budget_usd(self) -> Optional[float]:
        return PUBLISHED_BUDGET_USD.get(self.size)

    @property
    def shard_size(self) -> int:
        """GPUs the training state is sharded over (the trainer's FSDP mesh uses the same)."""
        return shard_size_for(self.arch, self.hardware, self.hyper.micro_batch_tokens)

    def memory_estimate(self, micro_batch_tokens: Optional[int] = None) -> MemoryEstimate:
        """Per-GPU peak estimate (see module docstring for the model)."""
        tokens = micro_batch_tokens or self.hyper.micro_batch_tokens
        return memory_per_gpu(self.arch, self.shard_size, tokens)

    def fits(self) -> bool:
        if self.hardware.gpu_memory_gib == 0:
            return True
        return self.memory_estimate().total_gib <= 0.95 * self.hardware.gpu_memory_gib


#: Fraction of a card the planner may fill: the rest is for allocator fragmentation and
#: the longest packed micro-batches (the estimate is a model, not a measurement).
SHARD_HEADROOM = 0.85


def memory_per_gpu(a: Architecture, shard: int, tokens: int) -> MemoryEstimate:
    """Per-GPU peak with the 16N bytes of training state split over ``shard`` GPUs."""
    sharded = 16 * a.n_params / shard
    per_layer = (a.n_params - 2 * a.vocab * a.hidden) / max(a.n_layers, 1)
    gathered = 2 * 2 * per_layer  # bf16, current + prefetched layer
    # Checkpointed inputs of every layer + one layer's recomputed activations
    # (~34 bytes x hidden per token, Korthikanti et al. with flash attention),
    # plus fp32 logits for the micro-batch.
    acts = tokens * a.hidden * 2 * a.n_layers + tokens * a.hidden * 34 + tokens * a.vocab * 4
    overhead = 4 * GIB
    return MemoryEstimate(sharded / GIB, gathered / GIB, acts / GIB, overhead / GIB)


def shard_size_for(a: Architecture, hw: Hardware, tokens: int) -> int:
    """The smallest whole-node shard group (a divisor of the node count, times the GPUs
    per node) whose estimate leaves SHARD_HEADROOM free; the whole world if none does.
    Without a known card memory (CPU), one node: replicas across nodes, as HSDP does."""
    if hw.gpu_memory_gib <= 0:
        return hw.gpus_per_node
    for k in range(1, hw.nodes + 1):
        if hw.nodes % k == 0:
            shard = k * hw.gpus_per_node
            if memory_per_gpu(a, shard, tokens).total_gib <= SHARD_HEADROOM * hw.gpu_memory_gib:
                return shard
    return hw.world_size


def _disk_gb(arch: Architecture, keep: int = 2) -> int:
    # base weights (bf16) + `keep` full checkpoints (fp32 params + Adam = 12N bytes) + export
    # + dataset and pip cache; rounded up to the next 128 GB.
    need = (2 * arch.n_params + keep * 12 * arch.n_params + 2 * arch.n_params) / 1e9 + 64
    return int(math.ceil(need / 128) * 128)


def get_preset(name: str, version: Optional[str] = None,
               base_model: Optional[str] = None, accelerator: Optional[str] = None,
               gpus_per_node: int = 8, nodes: Optional[int] = None) -> Preset:
    """Resolve a preset name (and optional version and overrides) to a full preset."""
    name = name.lower().strip()
    if name == "tiny":
        vname = version or DEFAULT_VERSION["tiny"]
        if vname not in VERSIONS:
            raise RecipeError(f"unknown version {vname!r}; choose one of: {', '.join(VERSIONS)}")
        v = VERSIONS[vname]
        return Preset(
            name="tiny", size="tiny", version=v.name,
            base_model=base_model or "config:tiny", tokenizer="builtin:llama-sp",
            template=v.template, arch=TINY,
            # CPU (2 processes) unless a GPU type is asked for (e.g. --gpus A100-80GB:1).
            hardware=hardware_for("cpu", 2, 1) if accelerator is None
            else hardware_for(accelerator, gpus_per_node, nodes or 1),
            # A 2-layer model trains in seconds: nothing to gain from recomputing activations.
            hyper=Hyperparameters(epochs=1, global_batch_size=16, learning_rate=2e-3,
                                  max_length=256, micro_batch_tokens=1024, micro_batch_size=4,
                                  dtype="fp32", gradient_checkpointing=False),
            reference_conversations=500, disk_size_gb=64,
        )
    if name == "small":
        return _small(version, base_model)
    if name not in SIZES:
        raise RecipeError(
            f"unknown preset {name!r}; choose one of: {', '.join(PRESET_NAMES)} "
            "(see `vicuna-cloud presets`)"
        )
    vname = version or DEFAULT_VERSION[name]
    if vname not in VERSIONS:
        raise RecipeError(f"unknown version {vname!r}; choose one of: {', '.join(VERSIONS)}")
    v = VERSIONS[vname]
    if name not in v.sizes:
        raise RecipeError(
            f"Vicuna {vname} has no {name} model; {vname} sizes: {', '.join(v.sizes)}"
        )
    arch = (LLAMA2 if v.base_family == "llama2" else LLAMA1)[name]
    default_nodes = 2 if name == "33b" else 1
    hw = hardware_for(accelerator or "A100-80GB", gpus_per_node, nodes or default_nodes)
    tokens = 8192 if v.max_length <= 4096 else v.max_length
    return Preset(
        name=name, size=name, version=vname,
        base_model=base_model or BASE_MODELS[(v.base_family, name)],
        tokenizer=base_model or BASE_MODELS[(v.base_family, name)],
        template=v.template, arch=arch, hardware=hw,
        hyper=Hyperparameters(max_length=v.max_length, micro_batch_tokens=tokens),
        reference_conversations=v.reference_conversations,
        disk_size_gb=_disk_gb(arch),
    )


def _small(version: Optional[str], base_model: Optional[str]) -> Preset:
    """A real pretrained base (SmolLM2-135M-Instruct) fine-tuned on this machine's CPU:
    what `make demo` runs. The Vicuna v1.1 format with the base tokenizer's EOS as the
    reply stop; sized so that fetching, converting, training, evaluating and comparing
    fit in a few minutes on 2 cores (bench/local_run.py measures it)."""
    vname = version or DEFAULT_VERSION["small"]
    if vname not in ("v1.1",):
        raise RecipeError(f"the small preset uses the Vicuna v1.1 format; got {vname!r}")
    v = VERSIONS[vname]
    base = base_model or SMALL_BASE
    return Preset(
        name="small", size="small", version=v.name, base_model=base, tokenizer=base,
        template=v.template, arch=SMOLLM2_135M, hardware=hardware_for("cpu", 2, 1),
        # CPU: memory is ample, recomputing activations would only cost time. The demo's
        # 10 steps at 2e-4: at 1e-4 "Who are you?" named a "Vicuna-AI project"; at 3e-4
        # the identity answer took over other prompts (measured, bench/local_run.py).
        hyper=Hyperparameters(epochs=1, global_batch_size=8, learning_rate=2e-4,
                              warmup_ratio=0.1, max_length=512, micro_batch_tokens=1024,
                              micro_batch_size=2, dtype="fp32", gradient_checkpointing=False),
        reference_conversations=200, disk_size_gb=64,
        # The demo's data and cadence (vicuna_cloud/local/launch.py): the sample's short
        # conversations, 15% held out (~10 prompts for the before/after), and a
        # checkpoint (1.6 GB: fp32 weights + Adam) every 4 steps.
        extra={"max_raw_bytes": 1000, "eval_fraction": 0.15, "checkpoint_steps": 4},
    )


def all_presets() -> list[Preset]:
    out = [get_preset("tiny"), get_preset("small")]
    for size in SIZES:
        for vname, v in VERSIONS.items():
            if size in v.sizes:
                out.append(get_preset(size, vname))
    return out
