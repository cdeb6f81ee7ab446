"""Checkpoints through megatron-core dist_checkpointing, published atomically, verified on load,
resharded on load.

Layout of `CHECKPOINTS_DIR` (names and the `latest` pointer: megatron_glm.rundir):
    iter_0000400/          one complete checkpoint: dist_checkpointing's files, common state, and
                           manifest.json (every file's size and CRC-32, written last)
    latest                 text file naming the newest complete checkpoint ("iter_0000400")

Saving: every rank writes into `iter_0000400.tmp`; after a barrier the ranks checksum the files
(each its share) and rank 0 writes the manifest, renames the directory into place and points
`latest` at it (write beside + rename). When the step was saved before (a resume that ends at the
step it resumed from, a stop signal right after a periodic save), the published copy is removed
only after `latest` names the new complete one, so no kill at any moment leaves `latest` without a
complete checkpoint behind it. A save that fails (full disk, I/O error) on any rank fails on every
rank (CheckpointSaveError) with the temporary directory removed and `latest` untouched.

Resuming (`find_resume_checkpoint`): the checkpoint `latest` names, verified against its manifest;
if `latest` is missing, unreadable or dangling, or the checkpoint is corrupt, the newest older
complete and intact checkpoint, with an event saying why. A run directory that has checkpoints
but none usable is an error (RunDirError), never a silent start from step 0.

What is saved: every model chunk (megatron-core sharded state dicts, so TP/PP/DP may change on
load), the DistributedOptimizer state in its `fully_reshardable` format (canonical per-parameter
tensors, loadable at any layout), and `common` state written by rank 0 (step, consumed samples,
scheduler, spike detector, resolved config values, anything the trainer adds). RNG states are
saved per (PP, TP, DP) rank and restored only when the layout is unchanged (dropout masks cannot
be resharded).
"""

from __future__ import annotations

import logging
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.strategies.base import StrategyAction, register_default_strategy
from megatron.core.dist_checkpointing.strategies.common import TorchCommonSaveStrategy
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
from megatron.core.utils import unwrap_model
from torch.distributed.checkpoint.api import CheckpointException

from megatron_glm import rundir
from megatron_glm.rundir import checkpoint_name, checkpoint_step, published_checkpoints, read_latest, write_latest
from megatron_glm.training import manifest

log = logging.getLogger("glm-train")

OPTIMIZER_SHARDING = "fully_reshardable"


class CheckpointSaveError(RuntimeError):
    """A save failed on some rank; raised on every rank. The previous checkpoint and `latest` are
    intact and the temporary directory is gone."""


class RunDirError(RuntimeError):
    """The checkpoints directory cannot be resumed from and must not be trained over."""


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint directory itself, or the one a checkpoints root's `latest` names."""
    name, problem = read_latest(Path(path))
    if name is not None and problem is None:
        return Path(path) / name
    if (Path(path) / "common.pt").is_file() or (Path(path) / "metadata.json").is_file():
        return Path(path)
    raise FileNotFoundError(problem or f"{path} is neither a dist checkpoint nor a directory with a `latest` pointer")


def latest_checkpoint(directory: str) -> Optional[Path]:
    """The checkpoint `latest` names, if that directory exists; None otherwise (no fallback: the
    trainer resumes through find_resume_checkpoint)."""
    name, problem = read_latest(Path(directory))
    return None if name is None or problem else Path(directory) / name


def _agree(error: Optional[BaseException]) -> Optional[str]:
    """Collective: None when no rank failed; otherwise the message of some failure (this rank's
    if it failed), on every rank, so all ranks take the same branch after a rank-local error."""
    flag = torch.tensor([0.0 if error is None else 1.0])
    if torch.cuda.is_available():
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not flag.item():
        return None
    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else f"rank {dist.get_rank()}: {error}")
    return str(error) if error is not None else next(m for m in messages if m)


class _GuardedCommonSave(TorchCommonSaveStrategy):
    """megatron-core's common-state strategy, but an error on rank 0 (ENOSPC while writing
    common.pt) is remembered instead of raised: raising there would leave the other ranks waiting
    forever in the collective save that follows. The save goes on and fails collectively.
    Registered as megatron-core's default for ("torch", 1) (`save` takes no common strategy
    argument); the files it writes are the default strategy's."""

    def __init__(self):
        super().__init__("torch", 1)
        self.error: Optional[BaseException] = None

    def save_common(self, common_state_dict, checkpoint_dir) -> None:
        try:
            super().save_common(common_state_dict, checkpoint_dir)
        except Exception as error:  # noqa: BLE001 - any failure becomes a collective one
            self.error = error

    def save_sharded_objects(self, sharded_objects_state_dict, checkpoint_dir) -> None:
        try:
            super().save_sharded_objects(sharded_objects_state_dict, checkpoint_dir)
        except Exception as error:  # noqa: BLE001
            self.error = error


_COMMON_SAVE: Optional[_GuardedCommonSave] = None


def _common_save_guard() -> _GuardedCommonSave:
    """The registered guarded strategy, its error cleared for a new save."""
    global _COMMON_SAVE
    if _COMMON_SAVE is None:
        _COMMON_SAVE = _GuardedCommonSave()
        register_default_strategy(StrategyAction.SAVE_COMMON, "torch", 1, _COMMON_SAVE)
    _COMMON_SAVE.error = None
    return _COMMON_SAVE


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
                    on_published: Optional[Callable[[Path], None]] = None, publish_pause_s: float = 0.0) -> Path:
    """Collective: every rank calls it. Returns the checkpoint's final path; `on_published(path)`
    runs on every rank once `latest` names it. Raises CheckpointSaveError on every rank when the
    save failed anywhere.

    async_queue: write the files in background processes (megatron-core's async save: tensors are
    staged to host memory and a forked writer saves them while training goes on); the checkpoint is
    published when the queue finalises the request (`maybe_finalize_async_calls`, collective).
    stall_before_publish (tests only) stops every rank after the files are written and before the
    rename, the worst moment for a kill -9, until the test kills the job from outside;
    publish_pause_s (tests only) pauses after each file-system step of the publish."""
    root = Path(directory)
    final = root / checkpoint_name(step)
    tmp = root / f"{checkpoint_name(step)}.tmp"
    error: Optional[BaseException] = None
    if dist.get_rank() == 0:
        try:
            root.mkdir(parents=True, exist_ok=True)
            finish_interrupted_publish(root)
            shutil.rmtree(tmp, ignore_errors=True)  # left by a job killed while saving
            tmp.mkdir()
        except OSError as failure:
            error = failure
    _raise_if_failed(error, tmp, f"cannot create {tmp}")
    state = _sharded_state(model, optimizer, is_loading=False)
    state["common"] = dict(common, layout=_layout(), step=step)
    common_save = _common_save_guard()

    def publish() -> None:
        dist.barrier()  # every rank's files (and rank 0's metadata) are complete
        if stall_before_publish:
            log.warning("stalling before publishing %s (test fault injection): waiting to be killed", tmp)
            while True:
                time.sleep(1.0)
        failure: Optional[BaseException] = None
        try:
            _write_manifest(tmp, step)
            time.sleep(publish_pause_s)
            if dist.get_rank() == 0:
                _publish(root, tmp, final, keep_last, publish_pause_s)
        except OSError as problem:
            failure = problem
        _raise_if_failed(failure, tmp, f"cannot publish {final.name}")
        if on_published is not None:
            on_published(final)

    try:
        request = dist_checkpointing.save(state, str(tmp), async_sharded_save=async_queue is not None)
    except (Exception, CheckpointException) as failure:  # noqa: BLE001 - raised on every rank
        error = failure
    else:
        error = None
    _raise_if_failed(error or common_save.error, tmp, f"cannot write {tmp}")
    if async_queue is None:
        publish()
    else:
        request.add_finalize_fn(publish)
        async_queue.schedule_async_request(request)
    return final


def _raise_if_failed(error: Optional[BaseException], tmp: Path, what: str) -> None:
    """Collective: if any rank failed, remove the partial directory and raise on every rank."""
    message = _agree(error)
    if message is None:
        return
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    cause = message.strip().splitlines()[-1]  # megatron's CheckpointException text ends with the cause
    raise CheckpointSaveError(f"{what}: {cause.strip()} ({_free_space(tmp.parent)})")


def _free_space(directory: Path) -> str:
    """torch reports a full disk as "unexpected pos 704 vs 598": say how much room is left."""
    try:
        usage = shutil.disk_usage(directory)
    except OSError as error:
        return f"free space of {directory} unknown: {error.strerror}"
    return f"{usage.free / 2**30:.2f} GiB free of {usage.total / 2**30:.2f} GiB on the file system of {directory}"


def _write_manifest(tmp: Path, step: int) -> None:
    """Collective: each rank checksums its share of the files, rank 0 writes the manifest."""
    files = [manifest.list_files(tmp) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(files, src=0)
    mine = files[0][dist.get_rank()::dist.get_world_size()]
    error, entries = None, {}
    try:
        entries = manifest.checksum_files(tmp, mine)
    except OSError as failure:
        error = failure
    _raise_if_failed(error, tmp, f"cannot checksum the files of {tmp}")
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, entries)
    if dist.get_rank() == 0:
        manifest.write_manifest(tmp, {name: entry for part in gathered for name, entry in part.items()}, step)


def finish_interrupted_publish(root: Path) -> None:
    """Rank 0: complete a publish that a kill interrupted between its steps. `latest` naming
    `iter_N.tmp`: that copy is complete (it has its manifest), and `iter_N`, if still there, is
    the old copy of the same step, possibly half deleted -> remove it, rename the new one into
    place; `latest` still naming `iter_N.tmp` after that rename -> point it at `iter_N`."""
    name, _ = read_latest(root)
    if name is None:
        return
    final_name = name[:-len(".tmp")] if name.endswith(".tmp") else name
    tmp, final = root / f"{final_name}.tmp", root / final_name
    if not (tmp.is_dir() and manifest.has_manifest(tmp)):
        if name.endswith(".tmp") and manifest.has_manifest(final):  # killed after the last rename
            write_latest(root, final.name)
        return
    if name.endswith(".tmp"):
        shutil.rmtree(final, ignore_errors=True)
    if final.exists():
        return
    tmp.rename(final)
    write_latest(root, final.name)


def _publish(root: Path, tmp: Path, final: Path, keep_last: Optional[int], pause_s: float = 0.0) -> None:
    """Rank 0: make the complete checkpoint in `tmp` the one `latest` names, then prune. When the
    step exists already, `latest` first names the new copy (complete, in `tmp`), then the old copy
    goes, then the new one takes its name: at every moment `latest` names a complete checkpoint,
    or (between the last two renames) a name finish_interrupted_publish resolves."""
    if final.exists():
        write_latest(root, tmp.name)
        time.sleep(pause_s)
        shutil.rmtree(final)
        time.sleep(pause_s)
    tmp.rename(final)
    time.sleep(pause_s)
    write_latest(root, final.name)
    time.sleep(pause_s)
    if keep_last:
        _prune(root, keep_last, final.name)


def _prune(root: Path, keep_last: int, newest: str) -> None:
    complete = published_checkpoints(root)
    for _, old in complete[:-keep_last]:
        if old.name != newest:
            shutil.rmtree(old, ignore_errors=True)


@dataclass
class ResumePoint:
    """What find_resume_checkpoint decided: the checkpoint to load (None: a fresh run) and the
    events to record about the way there (kind, message, fields)."""

    path: Optional[Path] = None
    events: List[tuple] = field(default_factory=list)


def find_resume_checkpoint(directory: str, verify: bool = True) -> ResumePoint:
    """Collective: the checkpoint a (re)starting run continues from.

    `latest`'s checkpoint if it is complete and intact; else the newest older one that is, with a
    `checkpoint_fallback` event (latest missing, unreadable or dangling) or `checkpoint_corrupt`
    events (a file differs from its manifest). A directory with checkpoints of which none is
    usable raises RunDirError: starting from step 0 would train over the run's history."""
    root = Path(directory)
    if dist.get_rank() == 0 and root.is_dir():
        finish_interrupted_publish(root)
    dist.barrier()
    name, problem = read_latest(root)
    candidates = [path for _, path in reversed(published_checkpoints(root))]
    point = ResumePoint()
    if name is None and problem is None and not candidates:
        return point
    if problem is not None or name is None:
        reason = problem or f"{root / rundir.LATEST} is missing"
        point.events.append(("checkpoint_fallback", f"{reason}; looking for the newest complete checkpoint",
                             {"reason": reason}))
    else:
        named = root / name
        candidates = [named] + [path for path in candidates
                                if checkpoint_step(path.name) < checkpoint_step(name)]
    for index, path in enumerate(candidates):
        trusted_legacy = index == 0 and problem is None and name is not None and not manifest.has_manifest(path)
        if trusted_legacy:  # written before manifests existed: `latest` vouches for it
            log.warning("%s has no manifest (written by an older version): loading it unverified", path)
            point.path = path
            return point
        problems = verify_collectively(path) if verify else (
            [] if manifest.has_manifest(path) else [manifest.ManifestError(path, "no manifest")])
        if not problems:
            if index > 0 or problem is not None or name is None:
                point.events.append(("checkpoint_fallback", f"resuming from {path.name}, the newest complete "
                                                            "and intact checkpoint", {"path": str(path)}))
            point.path = path
            return point
        first = problems[0]
        point.events.append(("checkpoint_corrupt", f"{first}; {len(problems)} problem(s), not loading it",
                             {"path": str(path), "file": first.file or "", "problems": [str(p) for p in problems[:10]]}))
    raise RunDirError(f"{root} has checkpoints ({', '.join(p.name for p in candidates) or name}) but none is "
                      "complete and intact (see `glm-ckpt verify`); refusing to start from step 0 over this "
                      "run's history. Restore a checkpoint, or start a new run in another --run-dir.")


def verify_collectively(path: Path) -> List[manifest.ManifestError]:
    """Collective: check `path` against its manifest, each rank reading its share of the files;
    every rank gets every problem."""
    record, error = None, None
    if dist.get_rank() == 0:
        try:
            record = manifest.read_manifest(path)
        except manifest.ManifestError as failure:
            error = failure
    shared = [record, error]
    dist.broadcast_object_list(shared, src=0)
    record, error = shared
    if error is not None:
        return [error]
    names = sorted(record["files"])[dist.get_rank()::dist.get_world_size()]
    mine = manifest.verify_files(path, record, names)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return [problem for part in gathered for problem in part]


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
