"""`glm-launch plan --inference`: will a model fit a set of GPUs for inference, quantized or not?

    glm-launch plan --inference --model glm-130b --quantize int4 --gpus 4xrtx3090 [--tp N]
                    [--batch 1] [--seq 2048] [--json]

Inference runs tensor-parallel only (GLM-130B's inference layout: every GPU holds 1/TP of every
layer). Bytes per GPU at TP t (h hidden, f GeGLU inner size, L layers, V padded vocabulary, a heads,
b batch, s sequence; fp16 activations and unquantized tensors):

    linear weights   L (4 h^2 + 3 f h) / t x (2 fp16 | 1 int8 | 0.5 int4)
                     + per-row fp16 scales when quantized: L (3h + 2f) / t + 2 L h rows x 2 bytes
    other weights    word embedding (= tied LM head) V h / t, LayerNorms 4h per layer + 2h,
                     biases (3h + 2f) / t + 2h per layer, all fp16 (GLM-130B keeps them unquantized)
    KV cache         L x 2 (keys, values) x b s h / t x 2 bytes (keys after RoPE, fp16)
    activations      the prefill's working set of one layer: s b (6 h + 4 f / t) x 2 bytes (hidden
                     states, QKV, fc1 output and GeGLU product) + b (a / t) s^2 x 6 bytes (fp32
                     scores, fp16 probabilities) + the dequantized weight of the largest linear
                     layer (fp16 scratch, quantized models only) + the last position's fp32 logits
                     b V x 4 (gathered over TP)
    headroom         the caching allocator's fragmentation (8 % of the above, as the training
                     planner) + the CUDA context (0.5 GB) + NCCL buffers (0.4 GB) when t > 1

A GPU set fits when that total is at most the card's memory. Every GPU name is a card and its
memory in GiB as nvidia-smi reports it; the plan prints GiB. The TP must divide the heads and be
at most the number of GPUs; without --tp the plan takes all the GPUs and also names the smallest TP
that fits.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

from launch.memory_model import CUDA_CONTEXT_GB, FRAGMENTATION, GB, NCCL_WORKSPACE_GB  # GB: 1e9 bytes
from megatron_glm.config.loader import ConfigError

GPUS: Dict[str, float] = {
    "rtx3090": 24.0, "rtx4090": 24.0, "rtx2080ti": 11.0, "v100-16gb": 16.0, "v100-32gb": 32.0,
    "a100-40gb": 40.0, "a100-80gb": 80.0, "h100-80gb": 80.0, "h200": 140.0, "l40s": 45.0, "a10": 22.5,
}
"""Card -> memory in GiB as nvidia-smi reports it (MiB / 1024; "24 GB" cards have 24576 MiB)."""
GIB = 2 ** 30

WEIGHT_BYTES = {None: 2.0, "none": 2.0, "int8": 1.0, "int4": 0.5}


class InferencePlanError(ConfigError):
    """Bad --gpus, --tp or --quantize; the message says what is accepted."""

    def __init__(self, message: str):
        super().__init__([message])


def parse_gpus(text: str):
    match = re.fullmatch(r"(\d+)\s*x\s*([a-z0-9-]+)", text.strip().lower())
    if not match or match.group(2) not in GPUS or int(match.group(1)) < 1:
        raise InferencePlanError(f"--gpus {text!r}: expected COUNTxCARD with CARD one of {', '.join(sorted(GPUS))} "
                                 f"(e.g. 4xrtx3090, 8xrtx2080ti, 8xa100-40gb, 1xh200)")
    return int(match.group(1)), match.group(2), GPUS[match.group(2)]


@dataclass
class InferencePlan:
    gpus: int
    card: str
    card_gb: float
    tp: int
    quantize: Optional[str]
    batch: int
    seq: int
    weights_gb: float
    linear_weights_gb: float
    kv_cache_gb: float
    activations_gb: float
    headroom_gb: float
    total_gb: float
    fits: bool

    def to_json(self) -> dict:
        return asdict(self)


def plan_inference(model, tp: int, quantize: Optional[str], batch: int, seq: int, card: str, gpus: int
                   ) -> InferencePlan:
    """`model`: megatron_glm.config.schema.ModelConfig (any object with its size fields)."""
    h, f, layers, heads = model.hidden_size, model.ffn_hidden_size, model.num_layers, model.num_attention_heads
    vocab = getattr(model, "resolved_padded_vocab_size", None) or model.padded_vocab_size
    if quantize not in WEIGHT_BYTES:
        raise InferencePlanError(f"--quantize {quantize!r}: int8, int4 or none")
    if tp < 1 or heads % tp or tp > gpus:
        raise InferencePlanError(f"TP{tp}: the tensor-parallel degree must divide the {heads} heads and be at most "
                                 f"the {gpus} GPUs")
    linear = layers * (4 * h * h + 3 * f * h) / tp * WEIGHT_BYTES[quantize]
    if quantize in ("int8", "int4"):
        linear += layers * ((3 * h + 2 * f) / tp + 2 * h) * 2
    other = (vocab * h / tp + layers * (4 * h + (3 * h + 2 * f) / tp + 2 * h) + 2 * h) * 2
    kv = layers * 2 * batch * seq * h / tp * 2
    largest_linear = max(3 * h * h, h * h, 2 * f * h, f * h) / tp
    activations = (seq * batch * (6 * h + 4 * f / tp) * 2 + batch * (heads / tp) * seq * seq * 6
                   + batch * vocab * 4 + (largest_linear * 2 if quantize in ("int8", "int4") else 0))
    allocated = linear + other + kv + activations
    headroom = FRAGMENTATION * allocated + CUDA_CONTEXT_GB * GB + (NCCL_WORKSPACE_GB * GB if tp > 1 else 0)
    total = allocated + headroom
    card_gb = GPUS[card]
    return InferencePlan(gpus=gpus, card=card, card_gb=card_gb, tp=tp,
                         quantize=quantize if quantize != "none" else None,
                         batch=batch, seq=seq, weights_gb=(linear + other) / GIB, linear_weights_gb=linear / GIB,
                         kv_cache_gb=kv / GIB, activations_gb=activations / GIB, headroom_gb=headroom / GIB,
                         total_gb=total / GIB, fits=total <= card_gb * GIB)


def tp_choices(heads: int, gpus: int) -> List[int]:
    return [t for t in range(1, gpus + 1) if heads % t == 0]


def run(args) -> int:
    """The `plan --inference` handler: prints the plan (or JSON); exit 0 when it fits, 1 when not."""
    from megatron_glm.config.loader import load_run_config

    if not args.gpus:
        raise InferencePlanError("plan --inference needs --gpus COUNTxCARD (e.g. --gpus 4xrtx3090)")
    count, card, card_gb = parse_gpus(args.gpus)
    model = load_run_config(args.model, list(args.overrides)).model
    quantize = args.quantize if args.quantize != "none" else None
    tp = args.tp or max(tp_choices(model.num_attention_heads, count))
    plan = plan_inference(model, tp, quantize, args.batch, args.seq, card, count)
    smallest = next((t for t in tp_choices(model.num_attention_heads, count)
                     if plan_inference(model, t, quantize, args.batch, args.seq, card, count).fits), None)
    if args.json:
        print(json.dumps({**plan.to_json(), "model": args.model, "smallest_fitting_tp": smallest}))
        return 0 if plan.fits else 1
    name = quantize.upper() if quantize else "FP16"
    print(f"{args.model} {name} inference on {count} x {card} ({card_gb:.0f} GiB), TP{tp}, batch {args.batch} x "
          f"sequence {args.seq}, per GPU:")
    rows = [("weights", plan.weights_gb, f"linear {plan.linear_weights_gb:.2f} GiB ({name}) + embedding, LayerNorms, "
                                         "biases (fp16)"),
            ("KV cache", plan.kv_cache_gb, "fp16 keys and values of every layer"),
            ("activations", plan.activations_gb, "one layer's prefill working set, last-token logits"
                                                 + (", dequantize scratch" if quantize else "")),
            ("headroom", plan.headroom_gb, "fragmentation 8 %, CUDA context" + (", NCCL" if tp > 1 else ""))]
    for label, value, note in rows:
        print(f"  {label:<12} {value:8.2f} GiB   {note}")
    print(f"  {'total':<12} {plan.total_gb:8.2f} GiB   of {card_gb:.0f} GiB: "
          + ("fits" if plan.fits else f"does NOT fit ({plan.total_gb - card_gb:.1f} GiB over)"))
    if smallest is None:
        print(f"  no TP up to {count} fits on {card}: more GPUs, a larger card, "
              + ("INT4" if quantize == "int8" else "INT8 or INT4" if not quantize else "a smaller batch x sequence"))
    elif smallest != tp:
        print(f"  the smallest TP that fits: TP{smallest} ({smallest} GPUs)")
    return 0 if plan.fits else 1
