"""Typed run configuration: dataclasses with defaults and docstrings, one section per concern.

A run YAML mirrors this tree (`model:`, `parallel:`, `precision:` ...). Model presets
(`megatron_glm/config/presets/models/*.yaml`) hold a `model:` section only. Later sections (data,
training, checkpointing, logging) are added by the issues that own them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Literal, Optional, Tuple

# The choices of enum-like fields: the loader rejects anything else (naming file, line and the
# choices), and --help texts and validation read them from here.
Precision = Literal["fp32", "fp16", "bf16"]
RecomputeGranularity = Literal["none", "selective", "full"]
"""In order of memory saved (and compute spent)."""
RecomputeMethod = Literal["uniform", "block"]
AttentionBackend = Literal["local", "sdpa"]
SpikePolicy = Literal["log", "skip", "rollback"]
FaultKind = Literal["spike", "nan", "stall_during_save", "slow_publish"]


@dataclass
class EmbeddingGradShrinkConfig:
    """Embedding Gradient Shrink (docs/glm130b.md §4.2): forward unchanged, gradient scaled by alpha.

    `schedule` is a list of [step, alpha] knots, linearly interpolated, constant outside the knots.
    Two knots at the same step make a jump. Empty means alpha = `alpha` for the whole run.
    GLM-130B's final setting is alpha 0.1 on the input embedding and on the tied output weight.
    """

    alpha: float = 1.0
    schedule: List[Tuple[int, float]] = field(default_factory=list)
    apply_to_output_weight: bool = True
    """Also shrink the tied weight used for the logits (LargeScale's --shrink-logit-embedding-gradient)."""


@dataclass
class ModelConfig:
    """The GLM-130B architecture at any size (docs/glm130b.md §1): DeepNorm Post-LN, RoPE, GeGLU."""

    name: str = "custom"
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    ffn_hidden_size: Optional[int] = None
    """GeGLU inner size (fc1 has 2x this many outputs). None: 8/3 x hidden rounded up to 64."""
    vocab_size: int = 512
    """Tokenizer vocabulary including GLM's special tokens."""
    padded_vocab_size: Optional[int] = None
    """Embedding rows. None: vocab_size rounded up to make_vocab_size_divisible_by. Kept independent
    of the TP degree (unlike Megatron-LM) so checkpoints reshard without changing shapes."""
    make_vocab_size_divisible_by: int = 128
    seq_length: int = 2048
    layernorm_epsilon: float = 1e-5
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    rotary_base: int = 10000
    embedding_init_std: Optional[float] = None
    """Std of the word embedding init. None: sqrt(1 / (3 * hidden)), which is GLM-130B's 0.0052."""
    apply_query_key_layer_scaling: bool = True
    """Divide q by the layer number before QK^T and multiply back inside the FP32 softmax (cancels
    mathematically; keeps FP16 scores from overflowing, as GLM-130B trained)."""
    attention_backend: AttentionBackend = "local"
    """Core attention: "local" (megatron-core DotProductAttention: explicit fp32 scores and softmax)
    or "sdpa" (torch scaled_dot_product_attention with the boolean mask: fused kernels on GPU)."""
    embedding_grad_shrink: EmbeddingGradShrinkConfig = field(default_factory=EmbeddingGradShrinkConfig)
    source: str = ""
    """Where the shapes come from (a paper table, a public config file)."""

    @property
    def resolved_ffn_hidden_size(self) -> int:
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        return int(math.ceil(self.hidden_size * 8 / 3 / 64) * 64)

    @property
    def resolved_padded_vocab_size(self) -> int:
        if self.padded_vocab_size is not None:
            return self.padded_vocab_size
        multiple = self.make_vocab_size_divisible_by
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    @property
    def resolved_embedding_init_std(self) -> float:
        if self.embedding_init_std is not None:
            return self.embedding_init_std
        return math.sqrt(1.0 / (3.0 * self.hidden_size))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class ParallelConfig:
    """How the model is split: tensor x pipeline (x virtual pipeline) x data parallel."""

    tensor: int = 1
    pipeline: int = 1
    virtual_pipeline: Optional[int] = None
    """Model chunks per pipeline rank for the interleaved 1F1B schedule (None: not interleaved)."""
    data: Optional[int] = None
    """None: whatever the world size leaves (world / (tensor * pipeline))."""
    first_stage_layers: Optional[int] = None
    """Uneven pipelines: layers on the first stage (GLM-130B: 8 of 70 with PP 8)."""
    last_stage_layers: Optional[int] = None
    overlap_grad_reduce: bool = False
    """Reduce(-scatter) gradient buckets while the backward pass still runs (megatron-core DDP)."""


@dataclass
class RecomputeConfig:
    """Activation recomputation: none, selective (attention core only) or full (per layer)."""

    granularity: RecomputeGranularity = "none"
    method: RecomputeMethod = "uniform"
    num_layers: int = 1


@dataclass
class DataSourceConfig:
    """One text corpus written by `glm-prep tokenize` (a .bin/.idx prefix)."""

    prefix: str = ""
    weight: float = 1.0
    """Relative share of the text sequences (the instruction share is taken off the top)."""


@dataclass
class DataConfig:
    """Training data: tokenizer, text sources by weight, MIP at a fixed share of sequences."""

    tokenizer_model: str = ""
    special_token_ids: str = ""
    """For tokenizer models without GLM's specials, e.g. "mask=150000,gmask=150001,..."."""
    sources: List[DataSourceConfig] = field(default_factory=list)
    instruction_prefix: str = ""
    """MIP examples written by `glm-prep tokenize --format mip` (empty: no MIP)."""
    instruction_ratio: float = 0.05
    split: str = "949,50,1"
    cache_dir: str = ""
    """Where megatron-core caches sample indices. Empty: RUN_DIR/cache/datasets, on the run's
    shared storage: global rank 0 builds the index and every other rank, on every node, loads it
    (a node-local /tmp would hide it from the other nodes). Resolved once, in config.yaml."""
    synthetic: bool = False
    """Train on synthetic GLM sequences at model.seq_length instead of a corpus (GPU benchmarks,
    tests). Must be asked for: a run without data sources and without this flag is rejected."""
    reproduce_window_overflow: bool = False
    """Reproduce LargeScale's truncated [MASK] windows (docs/glm130b.md §2.3) instead of keeping every target."""


@dataclass
class FaultInjection:
    """Test-only: force the spike guard's hand at one step."""

    step: int = -1
    """Inject on the global batch that starts at sample step x global_batch_size (the batch of
    0-based step `step` in an undisturbed run); -1: never."""
    count: int = 1
    """Consecutive batches to inject on (FP16 hysteresis needs more than one overflow)."""
    kind: FaultKind = "spike"
    """"spike": the guard sees a loss 10x the real one; "nan": every gradient becomes NaN;
    "stall_during_save": every rank stops after writing a checkpoint's files, before publishing
    it, until killed (the kill -9 test kills the job from outside at that moment);
    "slow_publish": every publish pauses `pause_s` after each of its file-system steps (manifest,
    pointer, removal, rename), so the chaos test can kill the job inside each of them."""
    pause_s: float = 0.5


@dataclass
class TrainConfig:
    """The loop: steps, batch, optimizer, schedule, evaluation, checkpoints, spike guard."""

    steps: int = 100
    global_batch_size: int = 8
    micro_batch_size: int = 1
    rampup_batch_size: List[int] = field(default_factory=list)
    """[start, increment, ramp_samples]: megatron-core's batch-size ramp-up (GLM-130B: 192, 24,
    5493164 up to 4224). Empty: the full global batch from the first step."""
    peak_lr: float = 8e-5
    min_lr: float = 8e-6
    warmup_samples: int = 0
    decay_samples: int = 0
    """Cosine decay length in samples. 0: the samples of the planned `steps`, resolved when the
    run starts and kept from then on (config.yaml, checkpoints): raising `steps` on a resume
    continues the same schedule unless `override_lr_on_resume`."""
    override_lr_on_resume: bool = False
    """Take the schedule (peak/min LR, warmup, decay length) from this config when resuming
    (GLM-130B's --override-lr-scheduler); with decay_samples 0 the decay is re-planned for the
    new `steps`."""
    weight_decay: float = 0.1
    adam_beta2: float = 0.95
    clip_grad: float = 1.0
    loss_scale_window: int = 200
    """FP16: successful steps before the loss scale doubles again (GLM-130B's DeepSpeed config: 200)."""
    grad_reduce_in_fp32: bool = True
    """Gradient buffers and their data-parallel reduction in fp32 (megatron-core DDP). False keeps
    them in the model's half precision, as GLM-130B's DeepSpeed ZeRO-1 did: half the gradient
    memory (what lets TP4 x PP8 fit 40 GB; `glm-launch plan` counts it), at the cost of half-
    precision accumulation over micro-batches."""
    log_interval: int = 1
    eval_interval: int = 0
    """Steps between validation runs (0: only at the end)."""
    eval_batches: int = 1
    """Global batches of held-out data per validation (the same batches every time)."""
    eval_tasks: List[str] = field(default_factory=list)
    """Downstream tasks evaluated on the live model during training: GLM-130B-format task YAML files
    or folders of them (the files `glm-eval` reads; relative paths from the working directory, like
    the data paths). Results are `eval/<task>/<metric>` in metrics.jsonl and a `downstream_eval`
    event (megatron_glm/training/downstream.py)."""
    downstream_eval_interval: int = 0
    """Steps between downstream evaluations of `eval_tasks` (0: only at the end; they always run at
    the end when `eval_tasks` is set)."""
    save_interval: int = 0
    """Steps between checkpoints (0: only at the end and on a stop signal)."""
    keep_last: int = 3
    hang_timeout_s: float = 0.0
    """A rank that makes no progress (no optimizer step, save or validation finishing) this long
    is declared hung: stacks dumped under RUN_DIR/hangs/, exit 76. 0 = auto, max(10 x median step
    time, 15 min)."""
    hang_first_step_timeout_s: float = 1800.0
    """The same before the first step of an allocation (loading a checkpoint, the first step's
    compilation and communicator setup)."""
    verify_checkpoints: bool = True
    """Check a checkpoint against its manifest (sizes, CRC-32; every rank reads its share) before
    resuming from it; a corrupt one is skipped for the previous complete checkpoint."""
    init_from: str = ""
    """Start a new run from these model weights: a dist checkpoint directory (e.g. written by
    `glm-ckpt convert ... --to dist`, an import of the released GLM-130B) or a run's checkpoints/
    (its `latest`). Fresh optimizer, step 0. Ignored once the run has a checkpoint of its own."""
    async_save: bool = False
    """Write checkpoints in the background (megatron-core async save); published when complete."""
    tensorboard: bool = True
    """Also write the metrics as TensorBoard scalars under RUN_DIR/tb/."""
    skip_sample_ranges: List[Tuple[int, int]] = field(default_factory=list)
    """[first, last] sample ranges (0-based, inclusive) to jump over."""
    skip_step_ranges: List[Tuple[int, int]] = field(default_factory=list)
    """[first, last] steps (1-based, inclusive) whose data to jump over, as GLM-130B did for
    iterations 40701-40900 and 42401-42600: the samples those steps would have read in an
    undisturbed run (batch ramp-up included) are skipped."""
    spike_policy: SpikePolicy = "skip"
    """What the spike guard does: "log", "skip" (drop the update) or "rollback" (reload the last
    checkpoint and jump over the next `rollback_skip_samples`). Non-finite values are never applied."""
    rollback_skip_samples: int = 0
    fault_injection: FaultInjection = field(default_factory=FaultInjection)


@dataclass
class RunConfig:
    """Everything one run needs; loaded from YAML, overridden with dotted keys, validated once."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    precision: Precision = "fp32"
    """fp32 (tests), fp16 (GLM-130B: dynamic loss scaling, FP32 softmax) or bf16."""
    seed: int = 1234
