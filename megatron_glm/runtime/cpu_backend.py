"""Run megatron-core's real code paths on CPU (tests, laptops, CI).

megatron-core 0.16.1 assumes CUDA in many places: it allocates with ``device="cuda"`` or
``torch.cuda.current_device()``, checks ``param.type() == "torch.cuda.FloatTensor"`` in its
optimizers, forks CUDA RNG states for tensor-parallel dropout and pushes NVTX ranges. This module
maps each of those onto the CPU so that the engine itself (parallel_state, tensor_parallel layers,
pipeline schedules, DDP, the DistributedOptimizer, dist_checkpointing) runs unchanged over gloo.

Rules (DESIGN.md, "Running without GPUs"):
- it is installed explicitly by our runtime (``install_cpu_backend()``), never on import;
- it does nothing when CUDA is available: ``planned_patches()`` is empty there, so nothing is touched;
- the emulated "CUDA" RNG *is* the CPU default generator, so megatron's RNG tracker (which forks
  the CUDA generator around tensor-parallel dropout) controls the dropout masks drawn on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, List

import torch
from torch.overrides import TorchFunctionMode

_install_lock = threading.Lock()
_installed_mode: "CudaToCpuMode | None" = None


def _is_cuda_device(device: Any) -> bool:
    """True for every way megatron names a GPU: "cuda", "cuda:0", torch.device("cuda"), an int."""
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


_CPU = torch.device("cpu")

# Tensor methods whose first positional argument may be a device.
_TENSOR_METHODS_WITH_DEVICE_ARG = {torch.Tensor.to, torch.Tensor.new_empty, torch.Tensor.new_zeros}


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites device requests for CUDA into CPU ones, for every torch function call.

    Also answers ``Tensor.type()`` with the CUDA type names megatron's optimizers insist on, and
    turns ``Tensor.cuda()`` / ``pin_memory`` into CPU no-ops.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            if args[0].device.type == "cpu" and name.startswith("torch.") and ".cuda." not in name:
                return "torch.cuda." + name[len("torch."):]
            return name
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = _CPU
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func in _TENSOR_METHODS_WITH_DEVICE_ARG and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU) + tuple(args[2:])
        return func(*args, **kwargs)


class _FakeStream:
    """Stands in for torch.cuda.Stream / Event: every operation is already synchronous on CPU."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, *args, **kwargs):
        return _FakeStream()

    def record(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _noop(name: str) -> Callable[..., None]:
    """A fresh do-nothing function per patched name: torch.compile's trace rules key on identity."""

    def noop(*args, **kwargs):
        return None

    noop.__name__ = noop.__qualname__ = name
    return noop


def _stream_context(*args, **kwargs):
    return contextlib.nullcontext()


def _get_rng_state(device: Any = "cuda") -> torch.Tensor:
    return torch.get_rng_state()


def _set_rng_state(new_state: torch.Tensor, device: Any = "cuda") -> None:
    torch.set_rng_state(new_state)


def _manual_seed(seed: int) -> None:
    # Not torch.manual_seed: that one calls torch.cuda.manual_seed_all, i.e. back into us.
    torch.default_generator.manual_seed(int(seed))


def _manual_seed_all(seed: int) -> None:
    torch.default_generator.manual_seed(int(seed))


@dataclass(frozen=True)
class Patch:
    """One attribute replaced on one object (a module or a class)."""

    target: Any
    name: str
    replacement: Any

    def describe(self) -> str:
        owner = getattr(self.target, "__name__", type(self.target).__name__)
        return f"{owner}.{self.name}"


def planned_patches() -> List[Patch]:
    """Everything the backend would replace on this machine; empty when CUDA is available."""
    if torch.cuda.is_available():
        return []
    cuda = torch.cuda
    patches = [
        Patch(cuda, "current_device", lambda: 0),
        Patch(cuda, "device_count", lambda: 1),
        Patch(cuda, "set_device", _noop("set_device")),
        Patch(cuda, "synchronize", _noop("synchronize")),
        Patch(cuda, "empty_cache", _noop("empty_cache")),
        # torch.cuda._lazy_call (bound by name inside megatron's RNG code) runs its callback at once
        # only when CUDA "is initialized"; otherwise it queues it forever and RNG restores are lost.
        Patch(cuda, "is_initialized", lambda: True),
        Patch(cuda, "Stream", _FakeStream),
        Patch(cuda, "Event", _FakeStream),
        Patch(cuda, "current_stream", lambda *a, **k: _FakeStream()),
        Patch(cuda, "default_stream", lambda *a, **k: _FakeStream()),
        Patch(cuda, "stream", _stream_context),
        Patch(cuda, "get_rng_state", _get_rng_state),
        Patch(cuda, "set_rng_state", _set_rng_state),
        Patch(cuda, "manual_seed", _manual_seed),
        Patch(cuda, "manual_seed_all", _manual_seed_all),
        Patch(cuda, "default_generators", (torch.default_generator,)),
        Patch(cuda, "memory_allocated", lambda *a, **k: 0),
        Patch(cuda, "max_memory_allocated", lambda *a, **k: 0),
        Patch(cuda, "memory_reserved", lambda *a, **k: 0),
        Patch(cuda, "reset_peak_memory_stats", _noop("reset_peak_memory_stats")),
        Patch(cuda.random, "get_rng_state", _get_rng_state),
        Patch(cuda.random, "set_rng_state", _set_rng_state),
        Patch(cuda.random, "manual_seed", _manual_seed),
        Patch(cuda.nvtx, "range_push", _noop("range_push")),
        Patch(cuda.nvtx, "range_pop", _noop("range_pop")),
    ]
    return patches


class _DropRngForkWarning(logging.Filter):
    """megatron warns when the CPU RNG moves inside a CUDA RNG fork; here they are one generator."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def install_cpu_backend() -> bool:
    """Install the CPU backend in this process (and thread). Returns False when CUDA is present.

    Idempotent: a second call does nothing. Must run before the model or any process group using
    megatron-core is built.
    """
    global _installed_mode
    patches = planned_patches()
    if not patches:
        return False
    with _install_lock:
        if _installed_mode is not None:
            return True
        for patch in patches:
            setattr(patch.target, patch.name, patch.replacement)
        logging.getLogger("megatron.core.tensor_parallel.random").addFilter(_DropRngForkWarning())
        mode = CudaToCpuMode()
        mode.__enter__()  # stays active for the life of the process
        _installed_mode = mode
    return True


def cpu_backend_installed() -> bool:
    return _installed_mode is not None

