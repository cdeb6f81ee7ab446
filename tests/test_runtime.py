"""Rank discovery (torchrun, Slurm) and the CPU backend's contract."""

import subprocess
import sys

import pytest
import torch

from megatron_glm.runtime import cpu_backend
from megatron_glm.runtime.distributed import discover_world, expand_slurm_nodelist


def test_torchrun_variables():
    world = discover_world({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8",
                            "MASTER_ADDR": "node7", "MASTER_PORT": "1234"})
    assert (world.rank, world.local_rank, world.world_size) == (5, 1, 8)
    assert (world.master_addr, world.master_port, world.launcher) == ("node7", 1234, "torchrun")


def test_slurm_variables_pick_first_host_and_a_job_port():
    world = discover_world({"SLURM_PROCID": "17", "SLURM_LOCALID": "1", "SLURM_NTASKS": "768",
                            "SLURM_JOB_NODELIST": "dgx[003-005,010],login2", "SLURM_JOB_ID": "4242"})
    assert (world.rank, world.local_rank, world.world_size) == (17, 1, 768)
    assert world.master_addr == "dgx003" and world.launcher == "slurm"
    assert world.master_port == 20000 + 4242


def test_single_process_default():
    world = discover_world({})
    assert (world.rank, world.world_size, world.launcher) == (0, 1, "single")


def test_nodelist_expansion():
    assert expand_slurm_nodelist("a[1-3],b07,c[09-11,20]") == ["a1", "a2", "a3", "b07", "c09", "c10", "c11", "c20"]
    assert expand_slurm_nodelist("node001") == ["node001"]
    assert expand_slurm_nodelist("r[1-2]n[01-02]") == ["r1n01", "r1n02", "r2n01", "r2n02"]
    with pytest.raises(ValueError):
        expand_slurm_nodelist("gpu[001-003")


def test_backend_is_a_noop_when_cuda_is_available():
    """In a fresh process (other tests install the backend in this one, e.g. the planner's meta build)."""
    out = _python(
        "import torch\n"
        "from megatron_glm.runtime import cpu_backend\n"
        "torch.cuda.is_available = lambda: True\n"
        "assert cpu_backend.planned_patches() == []\n"
        "original = torch.cuda.current_device\n"
        "assert cpu_backend.install_cpu_backend() is False\n"
        "assert torch.cuda.current_device is original\n"
        "print(cpu_backend.cpu_backend_installed())\n"
    )
    assert out.split() == ["False"]


def test_backend_plans_the_documented_patches_without_cuda():
    if torch.cuda.is_available():
        return
    names = {patch.describe() for patch in cpu_backend.planned_patches()}
    for expected in ("torch.cuda.current_device", "torch.cuda.synchronize", "torch.cuda.Stream",
                     "torch.cuda.get_rng_state", "torch.cuda.manual_seed", "torch.cuda.random.set_rng_state",
                     "torch.cuda.nvtx.range_push"):
        assert expected in names


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_backend_maps_cuda_onto_cpu():
    out = _python(
        "import torch\n"
        "from megatron_glm.runtime.cpu_backend import install_cpu_backend\n"
        "assert install_cpu_backend() and install_cpu_backend()\n"
        "x = torch.zeros(3, device='cuda'); y = torch.ones(2, device=torch.cuda.current_device())\n"
        "z = x.cuda(); w = torch.empty(2).to('cuda:0')\n"
        "print(x.device, y.device, z.device, w.device, torch.nn.Parameter(x).type())\n"
        "state = torch.cuda.get_rng_state(); a = torch.rand(2); torch.cuda.set_rng_state(state)\n"
        "assert torch.equal(a, torch.rand(2))\n"
        "with torch.cuda.stream(torch.cuda.Stream()): torch.cuda.synchronize()\n"
    )
    assert out.split() == ["cpu", "cpu", "cpu", "cpu", "torch.cuda.FloatTensor"]


def test_megatron_rng_tracker_controls_cpu_dropout():
    """Tensor-parallel dropout forks megatron's CUDA RNG tracker: reproducible masks on CPU."""
    out = _python(
        "import torch\n"
        "from megatron_glm.runtime.cpu_backend import install_cpu_backend\n"
        "install_cpu_backend()\n"
        "from megatron.core.tensor_parallel import random as r\n"
        "r.initialize_rng_tracker(force_reset=True); tracker = r.get_cuda_rng_tracker(); tracker.add('tp', 7)\n"
        "with tracker.fork('tp'): a = torch.nn.functional.dropout(torch.ones(64), 0.5)\n"
        "tracker.reset(); tracker.add('tp', 7)\n"
        "with tracker.fork('tp'): b = torch.nn.functional.dropout(torch.ones(64), 0.5)\n"
        "with tracker.fork('tp'): c = torch.nn.functional.dropout(torch.ones(64), 0.5)\n"
        "print(torch.equal(a, b), torch.equal(b, c))\n"
    )
    assert out.split() == ["True", "False"]


def test_package_imports_without_cuda_te_or_apex():
    out = _python(
        "import importlib.util, torch\n"
        "import megatron_glm, megatron_glm.model.build, megatron_glm.training.step, megatron_glm.cli.train\n"
        "import data_prep, launch, checkpoints, megatron_glm.monitor\n"
        "from megatron_glm.runtime.cpu_backend import cpu_backend_installed\n"
        "print(torch.cuda.is_available(), importlib.util.find_spec('transformer_engine') is None,\n"
        "      importlib.util.find_spec('apex') is None, cpu_backend_installed())\n"
    )
    # No CUDA, no TE, no apex here -- and importing the package installed nothing.
    assert out.split() == ["False", "True", "True", "False"]


def test_collective_timeout_comes_from_the_cluster_environment():
    from megatron_glm.runtime.distributed import collective_timeout_s

    assert collective_timeout_s({}) == 600.0
    assert collective_timeout_s({"GLM_COLLECTIVE_TIMEOUT_S": "1800"}) == 1800.0
    with pytest.raises(ValueError, match="GLM_COLLECTIVE_TIMEOUT_S='soon' is not a number"):
        collective_timeout_s({"GLM_COLLECTIVE_TIMEOUT_S": "soon"})
