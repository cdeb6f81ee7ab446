"""Checkpoints through megatron-core dist_checkpointing, published atomically, resharded on load.

Layout of `CHECKPOINTS_DIR`:
    iter_0000400/          one complete checkpoint (dist_checkpointing's files + common state)
    latest                 text file naming the newest complete checkpoint ("iter_0000400")
A save writes into `iter_0000400.tmp` and is renamed into place by global rank 0 after every
rank has finished writing (a barrier); `latest` is replaced last (write + os.replace). A process
killed at any moment therefore leaves `latest` pointing at the previous complete checkpoint, and
loading never sees a half-written one. Older checkpoints beyond `keep_last` are deleted after the
new one is published. With an async queue the same publish step runs when megatron-core finalises
the background write, so the guarantee is the same.

What is saved: every model chunk (megatron-core sharded state dicts, so TP/PP/DP may change on
load), the DistributedOptimizer state in its `fully_reshardable` format (canonical per-parameter
tensors, loadable at any layout), and `common` state written by rank 0 (step, consumed samples,
scheduler, spike detector, anything the trainer adds). RNG states are saved per (PP, TP, DP) rank
and restored only when the layout is unchanged (dropout masks cannot be resharded).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.utils import unwrap_model
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

log = logging.getLogger("glm-train")

LATEST = "latest"
OPTIMIZER_SHARDING = "fully_reshardable"


def checkpoint_name(step: int) -> str:
    return f"iter_{step:07d}"


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint directory itself, or the one a checkpoints root's `latest` names."""
    found = latest_checkpoint(path)
    if found is not None:
        return found
    if (Path(path) / "common.pt").is_file() or (Path(path) / "metadata.json").is_file():
        return Path(path)
    raise FileNotFoundError(f"{path} is neither a dist checkpoint nor a directory with a `latest` pointer")


def latest_checkpoint(directory: str) -> Optional[Path]:
    """The checkpoint `latest` names, if it exists and is complete; None for a fresh run."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    path = Path(directory) / pointer.read_text().strip()
    return path if path.is_dir() else None


def _metadata() -> Dict[str, Any]:
    return {"distrib_optim_sharding_type": OPTIMIZER_SHARDING, "singleton_local_shards": False,
            "chained_optim_avoid_prefix": True}



def _layout() -> Dict[str, int]:
    return {"tp": parallel_state.get_tensor_model_parallel_world_size(),
            "pp": parallel_state.get_pipeline_model_parallel_world_size(),
            "dp": parallel_state.get_data_parallel_world_size()}


def start_checkpoint_writer_helpers() -> None:
    """Start megatron-core's checkpoint-writer helper process (the result-queue Manager its file
    writer uses) with SIGTERM/SIGUSR1/SIGINT ignored. Slurm delivers SIGTERM to every process of a
    job step on requeue or preemption; if this helper dies of it, the very save the trainer makes
    in answer to the signal fails with BrokenPipeError (seen on a real Slurm). Ignored dispositions
    are inherited, the trainer's own handlers are restored right after."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    stop_signals = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in stop_signals}
    try:
        filesystem_async._get_write_results_queue()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _rng_state() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}


def _sharded_state(model: List[torch.nn.Module], optimizer, is_loading: bool) -> Dict[str, Any]:
    metadata = _metadata()
    chunks = [unwrap_model(chunk) for chunk in model]
    state: Dict[str, Any] = {}
    if len(chunks) == 1:
        state["model"] = chunks[0].sharded_state_dict(metadata=metadata)
    else:
        for index, chunk in enumerate(chunks):
            parallel_state.set_virtual_pipeline_model_parallel_rank(index)
            state[f"model{index}"] = chunk.sharded_state_dict(metadata=metadata)
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=is_loading, metadata=metadata)
    layout = _layout()
    ranks = (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank(),
             parallel_state.get_data_parallel_rank())
    state["rng_state"] = ShardedObject("rng_state", _rng_state(), (layout["pp"], layout["tp"], layout["dp"]),
                                       ranks, replica_id=0)
    return state


def save_checkpoint(directory: str, step: int, model: List[torch.nn.Module], optimizer,
                    common: Dict[str, Any], keep_last: Optional[int] = None,
                    stall_before_publish: bool = False, async_queue: Optional[AsyncCallsQueue] = None,
                    on_published: Optional[Callable[[Path], None]] = None) -> Path:
    """Collective: every rank calls it. Returns the checkpoint's final path; `on_published(path)`
    runs on every rank once `latest` names it.

    async_queue: write the files in background processes (megatron-core's async save: tensors are
    staged to host memory and a forked writer saves them while training goes on); the checkpoint is
    published when the queue finalises the request (`maybe_finalize_async_calls`, collective).
    stall_before_publish (tests only) stops every rank after the files are written and before the
    rename, the worst moment for a kill -9, until the test kills the job from outside."""
    root = Path(directory)
    final = root / checkpoint_name(step)
    tmp = root / f"{checkpoint_name(step)}.tmp"
    if dist.get_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a job killed while saving
        tmp.mkdir()
    dist.barrier()
    state = _sharded_state(model, optimizer, is_loading=False)
    state["common"] = dict(common, layout=_layout(), step=step)

    def publish() -> None:
        dist.barrier()  # every rank's files (and rank 0's metadata) are complete
        if stall_before_publish:
            log.warning("stalling before publishing %s (test fault injection): waiting to be killed", tmp)
            while True:
                time.sleep(1.0)
        if dist.get_rank() == 0:
            _publish(root, tmp, final, keep_last)
        dist.barrier()
        if on_published is not None:
            on_published(final)

    if async_queue is None:
        dist_checkpointing.save(state, str(tmp))
        publish()
    else:
        request = dist_checkpointing.save(state, str(tmp), async_sharded_save=True)
        request.add_finalize_fn(publish)
        async_queue.schedule_async_request(request)
    return final


def _publish(root: Path, tmp: Path, final: Path, keep_last: Optional[int]) -> None:
    """Rank 0: rename the complete checkpoint into place, then point `latest` at it, then prune."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = root / f"{LATEST}.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / LATEST)
    if keep_last:
        _prune(root, keep_last, final.name)


def _prune(root: Path, keep_last: int, newest: str) -> None:
    complete = sorted(p for p in root.glob("iter_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in complete[:-keep_last]:
        if old.name != newest:
            shutil.rmtree(old, ignore_errors=True)


def _materialise_optimizer_state(optimizer) -> None:
    """A fresh optimizer has no Adam state, and megatron-core's DistributedOptimizer (without
    apex/TE) cannot describe a state it does not have. One step with lr 0 and zero gradients creates
    the state tensors without moving any parameter; loading then overwrites them."""
    for wrapper in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = wrapper.optimizer
        if inner.state:
            continue
        rates = [group["lr"] for group in inner.param_groups]
        for group in inner.param_groups:
            group["lr"] = 0.0
            for param in group["params"]:
                param.grad = torch.zeros_like(param)
        inner.step()
        for group, rate in zip(inner.param_groups, rates):
            group["lr"] = rate
            for param in group["params"]:
                param.grad = None


def _load_optimizer(optimizer, state: Any) -> None:
    """optimizer.load_state_dict, working around two problems of megatron-core 0.16.1 with torch's
    Adam (no apex/TE): its fully_reshardable loader copies every key of the live Adam state,
    including the scalar "step" it never saves, and fails; and it gives every parameter the *same*
    "step" tensor, which torch's Adam increments in place once per parameter (step 5 became 103 in
    our resume test). We load the common part, then the per-parameter tensors with "step" set
    aside, then give each parameter its own copy of "step"."""
    wrappers = getattr(optimizer, "chained_optimizers", [optimizer])
    states = state if isinstance(state, list) else [state]
    for wrapper, wrapper_state in zip(wrappers, states):
        wrapper_state = dict(wrapper_state)
        param_state = wrapper_state.pop("param_state", None)
        wrapper_state.pop("param_state_sharding_type", None)
        wrapper.load_state_dict(wrapper_state)
        if param_state is None:
            continue
        steps = {param: entry.pop("step") for param, entry in wrapper.optimizer.state.items() if "step" in entry}
        wrapper.load_parameter_state_from_fully_reshardable(param_state)
        for param, step in steps.items():
            wrapper.optimizer.state[param]["step"] = step.clone()


def load_checkpoint(path: Path, model: List[torch.nn.Module], optimizer) -> Dict[str, Any]:
    """Collective: load model and optimizer (any layout) and return the common state. RNG states
    are restored only when the checkpoint's TP/PP/DP layout equals the current one and an optimizer
    is loaded too (optimizer None: the weights only, to start a new run from them)."""
    common = dist_checkpointing.load_common_state_dict(str(path))["common"]
    same_layout = common.get("layout") == _layout() and optimizer is not None
    if optimizer is not None:
        _materialise_optimizer_state(optimizer)
    state = _sharded_state(model, optimizer, is_loading=True)
    if not same_layout:
        del state["rng_state"]
    loaded = dist_checkpointing.load(state, str(path))
    chunks = [unwrap_model(chunk) for chunk in model]
    if len(chunks) == 1:
        chunks[0].load_state_dict(loaded["model"])
    else:
        for index, chunk in enumerate(chunks):
            chunk.load_state_dict(loaded[f"model{index}"])
    if optimizer is not None:
        _load_optimizer(optimizer, loaded["optimizer"])
    if same_layout:
        rng = loaded["rng_state"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        tensor_parallel.get_cuda_rng_tracker().set_states(rng["tracker"])
    return common
