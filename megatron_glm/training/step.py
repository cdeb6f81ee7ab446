"""One optimizer step on megatron-core: DDP, (Distributed)Optimizer, pipeline schedules.

The pieces of the training loop's step (megatron_glm/training/loop.py), which the layout-
equivalence tests drive directly:
- `wrap_for_training`: megatron-core DDP around every model chunk (gradients reduced in fp32);
- `build_optimizer`: megatron-core's Adam(W); `use_distributed_optimizer` shards its state (ZeRO-1);
- `forward_backward`: one global batch through `get_forward_backward_func` (no pipelining, 1F1B,
  or interleaved 1F1B); the loss is GLM's per-sequence token mean (docs/glm130b.md §2.4),
  averaged over the sequences of the global batch;
- `guarded_optimizer_step`: megatron-core's optimizer step split at the gradient norm, so that the
  loop's spike guard decides between the norm and the update.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module

from megatron_glm.data.glm_sample import PackedSample, attention_mask


@dataclass
class MicroBatch:
    """Tensors of one micro-batch, every one [b, s] except attention_mask [b, 1, s, s]."""

    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    source_ids: Optional[torch.Tensor] = None
    """[b] index of each sequence's data source (the blend's dataset_id); stays on the CPU."""

    def to_current_device(self) -> "MicroBatch":
        """The batch on this rank's GPU (batches are built on the CPU); unchanged without CUDA."""
        if not torch.cuda.is_available():
            return self
        device = torch.cuda.current_device()
        moved = {name: getattr(self, name).to(device, non_blocking=True)
                 for name in ("tokens", "labels", "loss_mask", "position_ids", "attention_mask")}
        return MicroBatch(**moved, source_ids=self.source_ids)


def collate(samples: Sequence[PackedSample]) -> MicroBatch:
    """Stack packed samples into one micro-batch."""
    stack = lambda name: torch.stack([torch.as_tensor(getattr(s, name)) for s in samples])  # noqa: E731
    seq_length = len(samples[0].tokens)
    return MicroBatch(
        tokens=stack("tokens"),
        labels=stack("labels"),
        loss_mask=stack("loss_mask").float(),
        position_ids=stack("position_ids"),
        attention_mask=torch.stack([attention_mask(s.windows, seq_length) for s in samples]),
    )


def sequence_losses(token_loss: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """[b]: sum(loss * mask) / sum(mask) of each sequence (docs/glm130b.md §2.4)."""
    return (token_loss * loss_mask).sum(dim=1) / loss_mask.sum(dim=1).clamp(min=1.0)


def per_sequence_mean_loss(token_loss: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """mean over sequences of sum(loss * mask) / sum(mask): every sequence weighs the same."""
    return sequence_losses(token_loss, loss_mask).mean()


def _loss_func(loss_mask: torch.Tensor, source_ids: Optional[torch.Tensor], token_loss: torch.Tensor):
    per_sequence = sequence_losses(token_loss.float(), loss_mask)
    loss = per_sequence.mean()
    # clone: the schedule divides the returned loss in place by the number of micro-batches
    reported = {"loss": loss.detach().clone(), "sequence_losses": per_sequence.detach()}
    if source_ids is not None:
        reported["source_ids"] = source_ids
    return loss, reported


def glm_forward_step(data_iterator: Iterator[MicroBatch], model: torch.nn.Module):
    """forward_step_func for megatron-core schedules: every stage gets positions and the mask."""
    batch = next(data_iterator).to_current_device()
    token_loss = model(batch.tokens, batch.position_ids, batch.attention_mask, labels=batch.labels)
    return token_loss, partial(_loss_func, batch.loss_mask, batch.source_ids)


def wrap_for_training(chunks: List[torch.nn.Module], use_distributed_optimizer: bool = True,
                      overlap_grad_reduce: bool = False, grad_reduce_in_fp32: bool = True) -> List[DistributedDataParallel]:
    """megatron-core DDP around each chunk; gradients accumulate and reduce in fp32 (unless
    grad_reduce_in_fp32=False: in the model's precision).

    FP16/BF16 chunks are first wrapped in megatron-core's Float16Module (every parameter, LayerNorms
    included, in half precision, as GLM-130B's apex-O2-style training; fp32 logits out).
    overlap_grad_reduce: buckets are reduced as soon as their gradients are complete; the schedules
    then need DDP's no_sync (no reduction until the last micro-batch) and, with several chunks,
    start_grad_sync hooks, which are registered on the config as megatron-LM does.
    """
    config = chunks[0].config
    if config.fp16 or config.bf16:
        chunks = [Float16Module(config, chunk) for chunk in chunks]
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=grad_reduce_in_fp32,
        use_distributed_optimizer=use_distributed_optimizer,
        overlap_grad_reduce=overlap_grad_reduce,
    )
    wrapped = [
        DistributedDataParallel(config, ddp_config, chunk, disable_bucketing=(index > 0))
        for index, chunk in enumerate(chunks)
    ]
    config.finalize_model_grads_func = finalize_model_grads
    if overlap_grad_reduce:
        config.no_sync_func = [chunk.no_sync for chunk in wrapped] if len(wrapped) > 1 else wrapped[0].no_sync
        if len(wrapped) > 1:
            config.grad_sync_func = [chunk.start_grad_sync for chunk in wrapped]
    return wrapped


def build_optimizer(
    model: List[DistributedDataParallel],
    lr: float,
    weight_decay: float = 0.1,
    adam_beta2: float = 0.95,
    clip_grad: float = 1.0,
    use_distributed_optimizer: bool = True,
    min_lr: Optional[float] = None,
    loss_scale_window: int = 200,
):
    """megatron-core Adam with decoupled weight decay (no decay on LayerNorm and biases)."""
    config = model[0].config
    optimizer_config = OptimizerConfig(
        optimizer="adam",
        lr=lr,
        min_lr=min_lr,  # read back per param group by megatron-core's LR scheduler
        weight_decay=weight_decay,
        adam_beta1=0.9,
        adam_beta2=adam_beta2,
        adam_eps=1e-8,
        clip_grad=clip_grad,
        fp16=config.fp16,
        bf16=config.bf16,
        params_dtype=config.params_dtype,
        use_distributed_optimizer=use_distributed_optimizer,
        # Dynamic loss scaling as GLM-130B (docs/glm130b.md §3): start 2^16, hysteresis 2, floor 1,
        # window 200 (its DeepSpeed config).
        initial_loss_scale=2.0**16,
        min_loss_scale=1.0,
        hysteresis=2,
        loss_scale_window=loss_scale_window,
    )
    optimizer = get_megatron_optimizer(optimizer_config, model)
    config.grad_scale_func = optimizer.scale_loss  # the schedules scale the loss (FP16 loss scaling)
    return optimizer


def batch_losses(losses: List[Dict[str, torch.Tensor]], source_names: Sequence[str]) -> tuple:
    """Collective: (mean loss of the global batch, {"loss/<name>": mean per-sequence loss of that
    source} for the sources present in it), the same on every rank. One vector carries both, so
    the per-source numbers cost no extra collective in the training step."""
    n = len(source_names)
    # [mean of this rank's micro-batch losses, per source: sum of sequence losses, sequences]
    values = torch.zeros(1 + 2 * n, dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage() and losses:
        values[0] = torch.stack([entry["loss"].double() for entry in losses]).mean()
        for entry in losses:
            if n and "source_ids" in entry:
                ids = entry["source_ids"].long().cpu()
                values[1:1 + n].index_add_(0, ids, entry["sequence_losses"].double().cpu())
                values[1 + n:].index_add_(0, ids, torch.ones(len(ids), dtype=torch.float64))
    if torch.cuda.is_available():
        values = values.cuda()
    torch.distributed.all_reduce(values, group=parallel_state.get_pipeline_model_parallel_group())
    torch.distributed.all_reduce(values, group=parallel_state.get_data_parallel_group())
    values = values.cpu()
    sums, counts = values[1:1 + n], values[1 + n:]
    per_source = {f"loss/{name}": float(sums[i] / counts[i]) for i, name in enumerate(source_names) if counts[i] > 0}
    return float(values[0]) / parallel_state.get_data_parallel_world_size(), per_source


def run_schedule(model, micro_batches, num_micro_batches, micro_batch_size, seq_length, forward_only):
    """One pass of megatron-core's schedule over this rank's micro-batches; returns the last
    stage's per-micro-batch loss dicts (empty elsewhere)."""
    micro_batches = list(micro_batches)
    iterators = [iter(micro_batches) for _ in model]
    return get_forward_backward_func()(
        forward_step_func=glm_forward_step,
        data_iterator=iterators if len(model) > 1 else iterators[0],
        model=model,
        num_microbatches=num_micro_batches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def evaluate(
    model: List[DistributedDataParallel],
    micro_batches: Iterable[MicroBatch],
    num_micro_batches: int,
    micro_batch_size: int,
    seq_length: int,
) -> float:
    """Mean per-sequence loss of a batch, forward only (validation)."""
    for chunk in model:
        chunk.eval()
    with torch.no_grad():
        losses = run_schedule(model, micro_batches, num_micro_batches, micro_batch_size, seq_length, True)
    for chunk in model:
        chunk.train()
    return batch_losses(losses, ())[0]


def forward_backward(model: List[DistributedDataParallel], optimizer, micro_batches: Sequence[MicroBatch],
                     micro_batch_size: int, seq_length: int, source_names: Sequence[str] = ()) -> tuple:
    """Gradients of one global batch (this DP rank's micro-batches) in the DDP buffers. Collective:
    returns (mean loss, {"loss/<source>": loss}), the same on every rank."""
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    losses = run_schedule(model, micro_batches, len(micro_batches), micro_batch_size, seq_length, False)
    return batch_losses(losses, source_names)


def guarded_optimizer_step(optimizer, allow: Callable[[Optional[torch.Tensor]], bool] = lambda grad_norm: True) -> tuple:
    """megatron-core's ChainedOptimizer.step with a decision between the gradient norm and the
    update: `allow(grad_norm)` False leaves the weights as they are. Returns (applied, grad_norm,
    overflow); an FP16 overflow skips the update (the loss scaler has already backed off)."""
    if optimizer.prepare_grads():
        return False, None, True
    grad_norm = optimizer.get_grad_norm()
    if not allow(grad_norm):
        return False, grad_norm, False
    for inner in optimizer.chained_optimizers:
        parameters = inner.get_parameters()
        if parameters and inner.config.clip_grad > 0.0:
            clip_grad_by_total_norm_fp32(parameters, max_norm=inner.config.clip_grad, total_norm=grad_norm)
    return optimizer.step_with_ready_grads(), grad_norm, False
