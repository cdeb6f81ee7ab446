"""`glm-train --config RUN.yaml --run-dir DIR`: the training loop every rank runs.

One iteration: skip configured bad-data ranges -> set the embedding-gradient-shrink alpha -> one
global batch through megatron-core's schedule -> the spike guard sees the loss and the gradient
norm *before* the update (megatron-core's optimizer step split into prepare / norm / clip / step)
-> apply, skip or roll back -> metrics. Everything that decides is computed from all-reduced
values, so every rank takes the same decision. A stop signal (SIGTERM, or Slurm's SIGUSR1 before
the time limit) saves a checkpoint at the next step boundary and exits with ExitCode.REQUEUE; the end
of training writes DONE.

The global batch follows megatron-core's ramp-up calculator (`train.rampup_batch_size`); the LR
scheduler counts samples, so a ramp-up needs no other change. Each step also reports the loss of
every data source in the batch (`loss/<source>`, from the blend's dataset_id).

Starting: a run that already finished (DONE at or past `train.steps`) exits 0 without touching
anything. Otherwise the checkpoint to continue from is found (verified; a dangling `latest` or a
corrupt checkpoint falls back to the previous complete one, a run directory with checkpoints but
none usable is refused), derived config values are resolved once (megatron_glm.config.resolve) and
written to config.yaml. A checkpoint that cannot be written (full disk) ends the run with
ExitCode.CHECKPOINT_IO, the previous checkpoint intact.

Run directory layout and exit codes: megatron_glm.rundir.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
from megatron.core import dist_checkpointing
from megatron.core.utils import unwrap_model
from torch.distributed.checkpoint.api import CheckpointException

from megatron_glm.config.loader import to_yaml
from megatron_glm.config.resolve import ScheduleChanged, resolve_run, resolved_values
from megatron_glm.config.schema import RunConfig
from megatron_glm.model.build import build_model_chunks
from megatron_glm.metrics.schema import EventsWriter, MetricsWriter
from megatron_glm.metrics.spikes import SpikeDetector
from megatron_glm.rundir import ExitCode, RunDir
from megatron_glm.runtime.job import host_name, job_tag
from megatron_glm.training import flops
from megatron_glm.training.batches import DatasetBatches, SyntheticBatches
from megatron_glm.training.checkpointing import (CheckpointSaveError, ResumePoint, RunDirError,
                                                 find_resume_checkpoint, load_checkpoint, resolve_checkpoint,
                                                 save_checkpoint, start_checkpoint_writer_helpers)
from megatron_glm.training.schedules import BatchRampup, BatchSizeSchedule, LRScheduleConfig, build_lr_scheduler
from megatron_glm.training.step import (build_optimizer, evaluate, forward_backward, guarded_optimizer_step,
                                        wrap_for_training)
from megatron_glm.training.tensorboard import TensorBoardScalars
from megatron_glm.training.watchdog import HangWatchdog

log = logging.getLogger("glm-train")


@dataclass
class LoopState:
    """What a checkpoint must carry besides model and optimizer to continue exactly."""

    step: int = 0
    consumed_samples: int = 0
    skipped_steps: int = 0
    nan_steps: int = 0
    detector: dict = field(default_factory=dict)
    skip_ranges: List[List[int]] = field(default_factory=list)
    """Sample ranges added by rollbacks (the config's ranges are applied as well)."""


class _StopSignal:
    """Remembers that SIGTERM/SIGUSR1 arrived; the loop checks at step boundaries. Installed before
    the model is built, so a signal during start-up (Slurm's SIGTERM on requeue) is not fatal."""

    def __init__(self):
        self.received: Optional[int] = None
        for number in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(number, self._handle)

    def _handle(self, number, frame):
        self.received = number

    def agreed(self) -> bool:
        """True on every rank as soon as any rank got a signal."""
        flag = torch.tensor([1.0 if self.received else 0.0])
        if torch.cuda.is_available():
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _is_writer_rank() -> bool:
    """The rank that owns the last pipeline stage, TP rank 0, DP rank 0, writes metrics/events."""
    return (parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
            and parallel_state.get_data_parallel_rank() == 0)



def _param_norm(model) -> float:
    """L2 norm of all parameters: TP-sharded ones from every TP rank, replicated ones once (TP rank
    0), summed over the model-parallel group; the last pipeline stage's copy of the tied embedding
    (megatron-core marks it `shared`) is not counted twice. Squares accumulate where the parameters
    live; one value crosses to the host."""
    count_replicated = parallel_state.get_tensor_model_parallel_rank() == 0
    squares = [param.detach().float().pow(2).sum() for chunk in model for param in chunk.parameters()
               if not getattr(param, "shared", False)
               and (count_replicated or getattr(param, "tensor_model_parallel", False))]
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    total = torch.stack(squares).double().sum().to(device) if squares else torch.zeros((), dtype=torch.float64,
                                                                                       device=device)
    dist.all_reduce(total, group=parallel_state.get_model_parallel_group())
    return float(total.sqrt().item())


def batch_size_schedule(train) -> BatchSizeSchedule:
    rampup = (BatchRampup(*train.rampup_batch_size, global_batch_size=train.global_batch_size)
              if train.rampup_batch_size else None)
    return BatchSizeSchedule(train.global_batch_size, train.micro_batch_size,
                             parallel_state.get_data_parallel_world_size(), rampup)


class Trainer:
    def __init__(self, run: RunConfig, run_dir: str, resume: ResumePoint, events: Optional[EventsWriter]):
        """`run` resolved (megatron_glm.config.resolve); `resume` from find_resume_checkpoint."""
        self.run, self.train = run, run.train
        self.run_dir = Path(run_dir)
        self.layout = RunDir(run_dir)
        self.checkpoints = str(self.layout.checkpoints)
        self.resume = resume
        self.writer = _is_writer_rank()
        self.dp = parallel_state.get_data_parallel_world_size()
        self.batch_sizes = batch_size_schedule(self.train)
        planned_samples = self.batch_sizes.samples_before_step(self.train.steps)
        # [first, end) samples of the batches the test-only fault injector hits (None: it never does)
        fault = self.train.fault_injection
        self.fault_samples = None if fault.step < 0 or fault.kind == "stall_during_save" else (
            self.batch_sizes.samples_before_step(fault.step), self.batch_sizes.samples_before_step(fault.step + fault.count))
        self.skip_ranges = [list(r) for r in self.train.skip_sample_ranges] + [
            [self.batch_sizes.samples_before_step(first - 1), self.batch_sizes.samples_before_step(last) - 1]
            for first, last in self.train.skip_step_ranges]
        self.model = wrap_for_training(build_model_chunks(run), overlap_grad_reduce=run.parallel.overlap_grad_reduce,
                                       grad_reduce_in_fp32=self.train.grad_reduce_in_fp32)
        self.optimizer = build_optimizer(self.model, lr=self.train.peak_lr, weight_decay=self.train.weight_decay,
                                         adam_beta2=self.train.adam_beta2, clip_grad=self.train.clip_grad,
                                         min_lr=self.train.min_lr, loss_scale_window=self.train.loss_scale_window)
        self.scheduler = build_lr_scheduler(self.optimizer, LRScheduleConfig(
            peak_lr=self.train.peak_lr, min_lr=self.train.min_lr, warmup_samples=self.train.warmup_samples,
            decay_samples=self.train.decay_samples, override_on_resume=self.train.override_lr_on_resume, weight_decay=self.train.weight_decay))
        if not run.data.synthetic:
            # Twice the planned samples: skipped ranges and rollbacks move the stream forward.
            self.data = DatasetBatches(run, 2 * planned_samples + self.train.global_batch_size,
                                       self.train.global_batch_size, self.train.micro_batch_size)
            self.seq_length = run.model.seq_length
        else:  # data.synthetic (validated: a run without data must ask for it)
            self.seq_length = run.model.seq_length
            self.data = SyntheticBatches(run, self.train.global_batch_size, self.train.micro_batch_size,
                                         self.seq_length)
        self.detector = SpikeDetector()
        self.state = LoopState()
        self.flops_per_sequence = flops.model_flops_per_sequence(run.model, self.seq_length)
        self.peak = (flops.device_peak_tflops(torch.cuda.get_device_name()) if torch.cuda.is_available()
                     else flops.measure_cpu_matmul_peak_tflops(seconds=0.3))
        self.metrics = MetricsWriter(self.run_dir) if self.writer else None
        self.events = events
        self.tensorboard = TensorBoardScalars(self.run_dir) if self.writer and self.train.tensorboard else None
        self.async_saves = AsyncCallsQueue() if self.train.async_save else None
        self.watchdog: Optional[HangWatchdog] = None
        """Set by run_training; told of progress after every step and around saves."""
        self.downstream = None
        if self.train.eval_tasks:  # validated before start; the tasks' data is read once more here
            from megatron_glm.training.downstream import DownstreamEvaluator

            self.downstream = DownstreamEvaluator(run, self.model)
            self.downstream.alive = self._alive

    # --- events and checkpoints ------------------------------------------------------------
    def _event(self, kind: str, message: str, step: Optional[int] = None, **fields) -> None:
        if self.events is not None:
            record = self.events.write({"step": self.state.step if step is None else step, "kind": kind,
                                        "message": message, **fields})
            if self.tensorboard is not None:
                self.tensorboard.event(record)

    def _layout(self) -> dict:
        return {"tp": parallel_state.get_tensor_model_parallel_world_size(),
                "pp": parallel_state.get_pipeline_model_parallel_world_size(), "dp": self.dp,
                "vpp": self.run.parallel.virtual_pipeline}

    def save(self) -> None:
        self.state.detector = self.detector.state_dict()
        fault = self.train.fault_injection
        stall = fault.kind == "stall_during_save" and fault.step == self.state.step
        step = self.state.step
        self.finish_saves()  # at most one checkpoint in flight

        def published(path) -> None:
            self._event("checkpoint_saved", f"saved step {step}", step=step, path=str(path))

        save_checkpoint(self.checkpoints, step, self.model, self.optimizer,
                        {"loop": vars(self.state), "scheduler": self.scheduler.state_dict(),
                         "glm_model": self._shape(), "resolved": resolved_values(self.run)},
                        keep_last=self.train.keep_last, stall_before_publish=stall, async_queue=self.async_saves,
                        on_published=published,
                        publish_pause_s=fault.pause_s if fault.kind == "slow_publish" else 0.0)

    def _shape(self) -> dict:
        """The numbers glm-ckpt needs to read this checkpoint without a config (GLMShape's fields)."""
        model = self.run.model
        return {"num_layers": model.num_layers, "hidden_size": model.hidden_size,
                "num_attention_heads": model.num_attention_heads, "ffn_hidden_size": model.resolved_ffn_hidden_size,
                "padded_vocab_size": model.resolved_padded_vocab_size, "vocab_size": model.vocab_size,
                "layernorm_epsilon": model.layernorm_epsilon, "rotary_base": int(model.rotary_base)}

    def init_weights_from(self, source: str) -> None:
        """A new run starting from another checkpoint's model weights (fresh optimizer, step 0)."""
        path = resolve_checkpoint(source)
        load_checkpoint(path, self.model, optimizer=None)
        self._event("checkpoint_loaded", f"initialised the weights from {path}", path=str(path), weights_only=True)

    def finish_saves(self, blocking: bool = True) -> None:
        """Collective: publish background checkpoints that are complete (all of them if blocking).
        A background write that failed raises CheckpointSaveError (on every rank: megatron-core
        gathers write failures)."""
        if self.async_saves is None:
            return
        try:
            self.async_saves.maybe_finalize_async_calls(blocking=blocking)
        except CheckpointException as error:
            raise CheckpointSaveError(f"background checkpoint write failed: {error}") from error

    def load(self, resume: ResumePoint) -> bool:
        """Collective: record how the checkpoint was found, load it; False when there is none."""
        self.finish_saves()
        for kind, message, fields in resume.events:
            self._event(kind, message, **fields)
        if resume.path is None:
            return False
        path = resume.path
        common = load_checkpoint(path, self.model, self.optimizer)
        self.state = LoopState(**common["loop"])
        self.detector.load_state_dict(self.state.detector)
        self.scheduler.load_state_dict(common["scheduler"])
        self._event("checkpoint_loaded", f"resumed from step {self.state.step}", path=str(path))
        return True

    # --- one step --------------------------------------------------------------------------
    def _skip_bad_data(self) -> None:
        for first, last in self.skip_ranges + self.state.skip_ranges:
            if first <= self.state.consumed_samples <= last:
                self._event("skip", f"skipping samples {first}-{last}", first_sample=first, last_sample=last)
                self.state.consumed_samples = last + 1

    def _forward_backward(self, batch_size: int) -> tuple:
        """(mean loss, {"loss/<source>": loss}) of the global batch at the current position."""
        for chunk in self.model:
            unwrap_model(chunk).set_training_step(self.state.step)
        batches = self.data.batches_at(self.state.consumed_samples, batch_size)
        return forward_backward(self.model, self.optimizer, batches, self.train.micro_batch_size, self.seq_length,
                                self.data.source_names)

    def _inject(self, loss: float) -> float:
        """Test-only fault, tied to the data position like a real bad batch: after a rollback
        that skips the batch, it does not fire again."""
        fault = self.train.fault_injection
        if self.fault_samples is None or not self.fault_samples[0] <= self.state.consumed_samples < self.fault_samples[1]:
            return loss
        if fault.kind == "nan":
            for chunk in self.model:
                for param in chunk.parameters():
                    grad = getattr(param, "main_grad", None)
                    (grad if grad is not None else param.grad).fill_(float("nan"))
            return loss
        return loss * 10.0

    def step(self) -> dict:
        self._skip_bad_data()
        started = time.perf_counter()
        batch_size = self.batch_sizes.at(self.state.consumed_samples)
        loss, source_losses = self._forward_backward(batch_size)
        loss = self._inject(loss)
        verdict = {}

        def allow(grad_norm) -> bool:
            norm = float(grad_norm) if grad_norm is not None else float("nan")
            spike = self.detector.update(self.state.step, loss, norm)
            verdict["spike"] = spike
            non_finite = not (math.isfinite(loss) and math.isfinite(norm))
            return not non_finite and (spike is None or self.train.spike_policy == "log")

        lr = self.optimizer.param_groups[0]["lr"]
        applied, grad_norm, overflow = guarded_optimizer_step(self.optimizer, allow)
        spike = verdict.get("spike")
        record = {"loss": loss, "grad_norm": None if grad_norm is None else float(grad_norm),
                  "overflow": overflow, "applied": applied, "lr": lr, "batch_size": batch_size,
                  "source_losses": source_losses}
        if spike is not None:
            action = "log" if applied else self.train.spike_policy
            self._event("spike", f"{spike.reason} spike at step {self.state.step}: {action}", loss=spike.loss,
                        grad_norm=spike.grad_norm, baseline_loss=spike.baseline_loss,
                        baseline_grad_norm=spike.baseline_grad_norm, action=action)
        if not applied:
            self.state.skipped_steps += 1
            if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(float(grad_norm))):
                self.state.nan_steps += 1
        if spike is not None and not applied and self.train.spike_policy == "rollback":
            return self._rollback(record)
        self.state.consumed_samples += batch_size
        self.scheduler.step(increment=batch_size)
        self.state.step += 1
        record["step_time_s"] = time.perf_counter() - started
        return record

    def _rollback(self, record: dict) -> dict:
        failed_at = self.state.consumed_samples
        self.finish_saves()
        resume = find_resume_checkpoint(self.checkpoints, verify=self.train.verify_checkpoints)
        path = resume.path
        if path is None:
            self._event("error", "rollback requested but no checkpoint exists; skipping the update instead")
            self.state.consumed_samples += record["batch_size"]
            self.state.step += 1
            return record
        self.load(resume)
        first, last = failed_at, failed_at + max(record["batch_size"], self.train.rollback_skip_samples) - 1
        self._event("rollback", f"rolled back to step {self.state.step}", path=str(path), to_step=self.state.step)
        self.state.skip_ranges.append([first, last])
        self._event("skip", f"will skip samples {first}-{last}", first_sample=first, last_sample=last)
        record["rolled_back"] = True
        return record

    # --- metrics ---------------------------------------------------------------------------
    def _write_metrics(self, record: dict, val_loss: Optional[float], downstream: Optional[dict] = None) -> None:
        """Collective (the parameter norm is all-reduced); only the writer rank writes."""
        param_norm = _param_norm(self.model)
        if self.metrics is None:
            return
        seconds = max(record.get("step_time_s", 0.0), 1e-9)
        sequences = record["batch_size"]
        world = dist.get_world_size()
        tflops = flops.tflops_per_gpu(self.flops_per_sequence, sequences, seconds, world)
        line = {
            "step": self.state.step, "consumed_samples": self.state.consumed_samples,
            "tokens": self.state.consumed_samples * self.seq_length, "loss": record["loss"],
            "grad_norm": record["grad_norm"], "param_norm": param_norm,
            "loss_scale": float(self.optimizer.get_loss_scale()), "skipped": self.state.skipped_steps,
            "nan": self.state.nan_steps, "lr": record["lr"],
            "batch_size": sequences, "step_time_s": seconds, "tokens_per_s": sequences * self.seq_length / seconds,
            "tflops_per_gpu": tflops, "mfu": flops.mfu(tflops, self.peak) if self.peak else None,
            "mem_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        }
        line.update(record["source_losses"])
        if val_loss is not None:
            line["val_loss"] = val_loss
        line.update(downstream or {})
        line = self.metrics.write(line)
        if self.tensorboard is not None:
            self.tensorboard.metrics(line)
        log.info("step %d/%d | loss %.4f | grad norm %s | lr %.3g | %.2f s/step | %.0f tokens/s%s",
                 self.state.step, self.train.steps, line["loss"],
                 "-" if line["grad_norm"] is None else f"{line['grad_norm']:.3f}", line["lr"],
                 seconds, line["tokens_per_s"], "" if val_loss is None else f" | val loss {val_loss:.4f}")

    def _downstream_eval(self) -> dict:
        """Collective: train.eval_tasks on the live model -> {"eval/<task>/<metric>": value}, and a
        `downstream_eval` event with the same numbers (megatron_glm/training/downstream.py)."""
        metrics, seconds = self.downstream.evaluate()
        scores = ", ".join(f"{k[5:]} {v:.4g}" for k, v in metrics.items()  # per-group numbers: event and metrics line
                           if not (k.count("/") == 3 and "/".join(k.split("/")[:2] + k.split("/")[3:]) in metrics))
        self._event("downstream_eval", f"downstream evaluation at step {self.state.step}: {scores}",
                    metrics=metrics, seconds=round(seconds, 3))
        if dist.get_rank() == 0:
            log.info("step %d | downstream eval (%.1f s) | %s", self.state.step, seconds, scores)
        return metrics

    def _validate(self) -> Optional[float]:
        batches = self.data.validation_batches()
        if not batches:
            return None
        return evaluate(self.model, batches, len(batches), self.train.micro_batch_size, self.seq_length)

    # --- the run ---------------------------------------------------------------------------
    def fit(self, stop: "_StopSignal") -> int:
        if dist.get_rank() == 0:
            self.layout.clear_done()  # a longer run continues this one
        resumed = self.load(self.resume)
        if not resumed and self.train.init_from:
            self.init_weights_from(self.train.init_from)
        extra = {} if resumed else {"val_loss": self._validate()}  # the step-0 reference
        self._event("restart" if resumed else "start", "training", world_size=dist.get_world_size(),
                    layout=self._layout(), **{k: v for k, v in extra.items() if v is not None})
        try:
            return self._train_until_done(stop)
        except CheckpointSaveError as error:
            message = (f"checkpoint save failed at step {self.state.step}: {error}. The previous checkpoint and "
                       f"`latest` are intact; free space or fix the file system, then start the run again.")
            self._event("error", message, reason="checkpoint_io", exit_code=int(ExitCode.CHECKPOINT_IO))
            if dist.get_rank() == 0:
                log.error(message)
            return ExitCode.CHECKPOINT_IO

    def _alive(self) -> None:
        """Tell the hang watchdog the job moves (after a step; around saves and validation)."""
        if self.watchdog is not None:
            self.watchdog.progress(self.state.step)

    def _train_until_done(self, stop: "_StopSignal") -> int:
        while self.state.step < self.train.steps:
            record = self.step()
            self._alive()
            last = self.state.step >= self.train.steps
            evaluate_now = last or (self.train.eval_interval and self.state.step % self.train.eval_interval == 0)
            val_loss = self._validate() if evaluate_now and not record.get("rolled_back") else None
            self._alive()
            downstream = (self._downstream_eval() if self.downstream is not None and not record.get("rolled_back")
                          and self.downstream.due(self.state.step, last) else None)
            if downstream is not None:
                self._alive()
            # _param_norm and the metrics line involve collectives: every rank calls them.
            if record.get("rolled_back") is None and (last or self.state.step % self.train.log_interval == 0
                                                      or val_loss is not None or downstream is not None):
                self._write_metrics(record, val_loss, downstream)
            if self.train.save_interval and self.state.step % self.train.save_interval == 0 and not last:
                self.save()
            self.finish_saves(blocking=False)
            self._alive()
            if stop.agreed():
                self.save()
                self.finish_saves()
                self._event("stop", "stop signal: checkpoint saved, please requeue", reason="signal",
                            exit_code=int(ExitCode.REQUEUE))
                return ExitCode.REQUEUE
        self.save()
        self.finish_saves()
        self._event("stop", "training complete", reason="done", exit_code=0)
        if dist.get_rank() == 0:
            self.layout.mark_done(self.state.step)
        return ExitCode.DONE


def finished_step(run: RunConfig, run_dir: str) -> Optional[int]:
    """The step a finished run ended at, when it needs no more steps (DONE at or past
    train.steps); None when there is training to do. Says so on rank 0."""
    step = RunDir(run_dir).done_step()
    if step is None or step < run.train.steps:
        return None
    if dist.get_rank() == 0:
        log.warning("%s finished at step %d (DONE); nothing to do. Raise train.steps to train further.",
                    run_dir, step)
    return step


def _prepare(run: RunConfig, run_dir: str, events: Optional[EventsWriter]) -> tuple:
    """Collective: (resume point, resolved run) or a RunDirError / ScheduleChanged on every rank."""
    layout = RunDir(run_dir)
    resume = find_resume_checkpoint(str(layout.checkpoints), verify=run.train.verify_checkpoints)
    if resume.path is None:
        history = _published_history(layout)
        if history:
            raise RunDirError(f"{layout.path} has no checkpoint left, but its events record {len(history)} "
                              f"published (the last: {history[-1]}); refusing to train from step 0 over "
                              "this run's history. Restore the checkpoints, or use another --run-dir.")
    common = (dist_checkpointing.load_common_state_dict(str(resume.path))["common"]
              if resume.path is not None else None)
    planned = batch_size_schedule(run.train).samples_before_step(run.train.steps)
    return resume, resolve_run(run, run_dir, planned, common)


def _published_history(layout: RunDir) -> List[str]:
    """Paths of the checkpoints this run's events say were published in its checkpoints/ directory,
    wherever the run directory was then: one that was moved or copied (scratch to project space)
    keeps its history, so its events still stop a fresh start over it."""
    from megatron_glm.metrics.schema import read_events

    if not layout.events.is_file():
        return []
    events, _ = read_events(layout.path)
    return [e["path"] for e in events if e["kind"] == "checkpoint_saved"
            and Path(e["path"]).parent.name == layout.checkpoints.name]


def run_training(run: RunConfig, run_dir: str) -> int:
    """Collective entry point (process groups already initialised)."""
    layout = RunDir(run_dir)
    if finished_step(run, run_dir) is not None:
        return ExitCode.DONE
    layout.path.mkdir(parents=True, exist_ok=True)
    events = EventsWriter(layout.path) if _is_writer_rank() else None
    stop = _StopSignal()
    start_checkpoint_writer_helpers()
    trainer = None
    # From here a rank that stops making progress (a frozen peer, a stuck file system) ends the
    # job with ExitCode.HANG; checkpoint search and loading count as the first step.
    watchdog = HangWatchdog(run_dir, dist.get_rank(), dist.get_world_size(), host_name(), job_tag(),
                            timeout_s=run.train.hang_timeout_s,
                            first_step_timeout_s=run.train.hang_first_step_timeout_s).start()
    try:
        try:
            resume, run = _prepare(run, run_dir, events)
        except (RunDirError, ScheduleChanged) as error:
            if events is not None:
                reason = "schedule_changed" if isinstance(error, ScheduleChanged) else "bad_run_dir"
                events.write({"step": 0, "kind": "error", "message": str(error), "reason": reason,
                              "exit_code": int(ExitCode.BAD_INPUT)})
            if dist.get_rank() == 0:
                log.error("%s", error)
            return ExitCode.BAD_INPUT
        if dist.get_rank() == 0:
            layout.config.write_text(to_yaml(run))
        trainer = Trainer(run, run_dir, resume, events)
        trainer.watchdog = watchdog
        return trainer.fit(stop)
    finally:
        watchdog.stop()
        if trainer is not None:
            if trainer.async_saves is not None and trainer.async_saves.get_num_unfinalized_calls():
                trainer.async_saves.close(abort=True)  # failing: do not publish a checkpoint of a broken run
            for writer in (trainer.metrics, trainer.tensorboard):
                if writer is not None:
                    writer.close()
        if events is not None:
            events.close()
