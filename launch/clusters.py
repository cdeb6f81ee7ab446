"""Cluster profiles: the hardware the planner models and the Slurm settings submit renders.

A profile is a YAML file in launch/clusters/ (shipped: dgx-a100-96, local-slurm, local) or any
path; `--set dotted.key=value` overrides a field (site settings such as the partition, account,
container image or the InfiniBand HCA list). The hardware numbers are datasheet facts; what the
planner assumes about achievable efficiency lives in launch/performance.py, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

from megatron_glm.config.loader import ConfigError, _unknown_name_message, load_dataclass_file

CLUSTER_DIR = Path(__file__).parent / "clusters"


@dataclass
class DeviceSpec:
    """One accelerator (or, for CPU profiles, one rank's share of the host)."""

    name: str = "cpu"
    kind: str = "cpu"
    """"gpu" (one rank per GPU, NCCL) or "cpu" (gloo; for tests and laptops)."""
    memory_gb: float = 4.0
    """Usable memory per rank in GB (1e9 bytes): A100-SXM4-40GB has 40."""
    peak_tflops: float = 0.1
    """Dense fp16/bf16 tensor-core peak (A100: 312)."""
    hbm_gbps: float = 20.0
    """Memory bandwidth in GB/s (A100 40GB: 1555)."""


@dataclass
class FabricSpec:
    """How ranks talk: inside a node (NVLink) and between nodes (InfiniBand)."""

    intra_node: str = "shared memory"
    intra_node_busbw_gbps: float = 5.0
    """NCCL all-reduce bus bandwidth inside a node (DGX A100, NVSwitch: ~230 GB/s per nccl-tests)."""
    inter_node: str = "loopback TCP"
    inter_node_gbps_per_gpu: float = 1.0
    """Line rate per rank between nodes in GB/s (HDR InfiniBand 200 Gb/s = 25 GB/s, one HCA per GPU)."""


@dataclass
class SlurmSpec:
    """What goes into the #SBATCH header. Empty strings are site settings left unset (omitted)."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    time_limit: str = "04:00:00"
    signal_seconds: int = 900
    """USR1 this many seconds before the time limit (--signal=B:USR1@N): enough to save a checkpoint."""
    exclusive: bool = True
    requeue: bool = True
    """Site allows `scontrol requeue`; false: continue with a dependent job instead."""
    exclude: List[str] = field(default_factory=list)
    """Nodes never to run on (--exclude)."""
    container_image: str = ""
    """pyxis/enroot image (srun --container-image), e.g. "nvcr.io#nvidia/pytorch:24.05-py3" or a
    .sqsh path; every Python step of the job runs in it (launch/sbatch.py). Empty: on the host."""
    container_mounts: str = ""
    """Further pyxis mounts, "SRC[:DST[:FLAGS]],..." (flags joined by "+", e.g. "/lustre:/lustre:ro").
    The repository, the run directory and the directories of the run's data (glm-launch prep: its
    inputs, output and tokenizer) are mounted at their own paths without being listed here."""
    cpus_per_task: int = 0
    """0: omit (Slurm's default)."""
    task_exit_grace_seconds: int = 300
    """After the first task of the step ends, how long the others may take (srun --wait) before
    they are killed: long enough for every rank to finish writing a checkpoint."""
    max_failures: int = 3
    """Consecutive allocations that fail (crash, hang, pre-flight check) without a new checkpoint
    before the job gives up."""
    max_excluded_nodes: int = 4
    """Nodes the job hooks may keep out of later allocations after blaming them for a hang, a
    failed pre-flight check or a crash (RUN_DIR/slurm/excluded_nodes.json). The partition needs
    that many nodes beyond `nodes`, else the job pends for ever once they are excluded."""
    extra_sbatch: List[str] = field(default_factory=list)
    """Further #SBATCH lines, verbatim (e.g. "--gres=gpu:8")."""


@dataclass
class ClusterProfile:
    name: str = "local"
    description: str = ""
    scheduler: str = "slurm"
    """"slurm" or "none" (this machine only: glm-launch run)."""
    nodes: int = 1
    gpus_per_node: int = 1
    """Ranks per node (one task per GPU)."""
    device: DeviceSpec = field(default_factory=DeviceSpec)
    fabric: FabricSpec = field(default_factory=FabricSpec)
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    env: Dict[str, str] = field(default_factory=dict)
    """Environment for every rank (NCCL and CUDA settings of the fabric)."""

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass
class Mount:
    """One pyxis --container-mounts entry."""

    text: str
    source: str
    target: str
    flags: List[str]
    auto: bool = False
    """Added by the launcher (not the profile's own)."""

    @property
    def read_only(self) -> bool:
        return "ro" in self.flags


def parse_mounts(text: str, auto: bool = False) -> List[Mount]:
    """pyxis's syntax: entries separated by ",", each SRC[:DST[:FLAGS]] (DST defaults to SRC,
    FLAGS joined by "+"). Surrounding blanks and empty entries are dropped (pyxis refuses an empty
    entry); mount_problems says what pyxis would refuse."""
    mounts = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        source, _, rest = entry.partition(":")
        target, _, flags = rest.partition(":")
        mounts.append(Mount(entry, source, target or source, [f for f in flags.split("+") if f], auto))
    return mounts


def mount_problems(text: str, name: str) -> List[str]:
    problems = []
    for entry in (e.strip() for e in text.split(",")):
        source, _, rest = entry.partition(":")
        target = rest.partition(":")[0] if rest else source
        if not source or (rest and not target):
            problems.append(f"{name}: slurm.container_mounts entry {entry!r}: write SRC[:DST[:FLAGS]]")
        elif not (source[0] in "./" or source in ("tmpfs", "umount")) or target[0] not in "./":
            problems.append(f"{name}: slurm.container_mounts entry {entry!r}: the source must be a path, tmpfs or "
                            f"umount and the target a path")
    return problems if text.strip() else []


def cluster_names() -> List[str]:
    return sorted(p.stem for p in CLUSTER_DIR.glob("*.yaml"))


def load_cluster(spec: str, overrides: Sequence[str] = ()) -> ClusterProfile:
    """A shipped profile by name, or a YAML file; `overrides` are dotted.key=value. Raises
    ConfigError naming the file, line and field."""
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml") and not path.exists():
        path = CLUSTER_DIR / f"{spec}.yaml"
        if not path.is_file():
            raise ConfigError([_unknown_name_message("cluster profile", spec, cluster_names())])
    elif not path.is_file():
        raise ConfigError([f"{spec}: no such cluster profile file"])
    profile = load_dataclass_file(ClusterProfile, path, overrides)
    problems = _profile_problems(profile, str(path))
    if problems:
        raise ConfigError(problems)
    return profile


def _profile_problems(profile: ClusterProfile, name: str) -> List[str]:
    problems = []
    if profile.scheduler not in ("slurm", "none"):
        problems.append(f"{name}: scheduler={profile.scheduler!r}; choose slurm or none")
    if profile.device.kind not in ("gpu", "cpu"):
        problems.append(f"{name}: device.kind={profile.device.kind!r}; choose gpu or cpu")
    for key in ("nodes", "gpus_per_node"):
        if getattr(profile, key) < 1:
            problems.append(f"{name}: {key}={getattr(profile, key)} must be >= 1")
    for key in ("memory_gb", "peak_tflops", "hbm_gbps"):
        if getattr(profile.device, key) <= 0:
            problems.append(f"{name}: device.{key} must be > 0")
    if profile.slurm.signal_seconds < 0:
        problems.append(f"{name}: slurm.signal_seconds must be >= 0")
    if profile.slurm.max_excluded_nodes < 0:
        problems.append(f"{name}: slurm.max_excluded_nodes must be >= 0 (0: never exclude a node)")
    problems.extend(mount_problems(profile.slurm.container_mounts, name))
    return problems
