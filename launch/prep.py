"""`glm-launch prep`: data preparation on Slurm as a job array over input shards plus a dependent
merge job (`glm-prep tokenize --shard i/n`, then `glm-prep merge`).

Shard i of n tokenises every n-th input file from the i-th (glm-prep's --shard) into
PREFIX.shard-0000i-of-0000n; the merge job starts only if every array task succeeded
(--dependency=afterok) and concatenates the shards in order into PREFIX. With one shard per input
file (the default) the merged dataset is byte-for-byte what a single `glm-prep tokenize` over the
same inputs writes; with fewer shards it holds the same documents, grouped by shard.

With `slurm.container_image` both run `glm-prep` in the container (`srun --container-image`), the
repository its working directory, with the repository and the directories of the inputs, the
output and the tokenizer mounted at their own paths besides the profile's `slurm.container_mounts`.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from launch.clusters import load_cluster
from launch.sbatch import REPO_ROOT, container_mounts, container_options, site_options
from megatron_glm.config.loader import ConfigError


@dataclass
class PrepRequest:
    cluster: str
    inputs: List[str]
    output_prefix: str
    tokenizer_model: str
    shards: Optional[int] = None
    """None: one shard per input file."""
    log_dir: Optional[str] = None
    """Scripts and job logs (default: next to the output, PREFIX.slurm/)."""
    prep_args: List[str] = field(default_factory=list)
    """Further `glm-prep tokenize` arguments, verbatim (e.g. --format pile --workers 16)."""
    cluster_overrides: List[str] = field(default_factory=list)
    time_limit: str = "04:00:00"
    dry_run: bool = False


def _q(value) -> str:
    return shlex.quote(str(value))


def _expand(inputs: List[str]) -> List[str]:
    from data_prep.tokenize import PrepError, expand_inputs

    try:
        return expand_inputs(inputs)
    except PrepError as error:
        raise ConfigError([str(error)]) from error


def _header(cluster, name: str, log: str, time_limit: str) -> List[str]:
    s = cluster.slurm
    lines = [f"#SBATCH --job-name={name}", "#SBATCH --nodes=1", "#SBATCH --ntasks=1", f"#SBATCH --time={time_limit}",
             f"#SBATCH --output={log}", "#SBATCH --open-mode=append"]
    return lines + site_options(s)


def render_scripts(request: PrepRequest, files: List[str]) -> tuple:
    """(array script, merge script, log directory)."""
    cluster = load_cluster(request.cluster, request.cluster_overrides)
    n = request.shards or len(files)
    prefix = str(Path(request.output_prefix).resolve())
    logs = request.log_dir or f"{prefix}.slurm"
    python = _q(sys.executable)
    if cluster.slurm.container_image:
        s = cluster.slurm
        paths = [REPO_ROOT, *(str(Path(f).resolve().parent) for f in files), str(Path(prefix).parent),
                 str(Path(request.tokenizer_model).resolve().parent)]
        cpus = f" --cpus-per-task={s.cpus_per_task}" if s.cpus_per_task else ""  # srun no longer inherits it (22.05)
        python = (f"srun --nodes=1 --ntasks=1{cpus} "
                  f"{container_options(s, container_mounts(s.container_mounts, paths), REPO_ROOT)} python")
    width = max(5, len(str(n)))
    inputs = " ".join(_q(Path(f).resolve()) for f in files)
    extra = " ".join(_q(a) for a in request.prep_args)
    array = "\n".join(["#!/bin/bash", f"# glm-launch prep: shard $SLURM_ARRAY_TASK_ID of {n} (glm-prep tokenize --shard i/n)",
                       *_header(cluster, "glm-prep", f"{logs}/tokenize-%A_%a.out", request.time_limit),
                       f"#SBATCH --array=0-{n - 1}", "set -euo pipefail",
                       f"SHARD=$(printf '%0{width}d' \"$SLURM_ARRAY_TASK_ID\")",
                       f"exec {python} -m data_prep.cli tokenize --quiet --input {inputs} "
                       f"--shard \"$SLURM_ARRAY_TASK_ID/{n}\" --output-prefix {_q(prefix)}.shard-\"$SHARD\"-of-{n:0{width}d} "
                       f"--tokenizer-model {_q(Path(request.tokenizer_model).resolve())} {extra}".rstrip(), ""])
    merge = "\n".join(["#!/bin/bash", f"# glm-launch prep: merge the {n} shards into {prefix} (after every shard succeeded)",
                       *_header(cluster, "glm-prep-merge", f"{logs}/merge-%j.out", request.time_limit),
                       "set -euo pipefail",
                       f"exec {python} -m data_prep.cli merge --quiet --input {_q(prefix)}'.shard-*-of-{n:0{width}d}' "
                       f"--output-prefix {_q(prefix)}", ""])
    return array, merge, logs


def submit_prep(request: PrepRequest) -> int:
    try:
        files = _expand(request.inputs)
        if request.shards is not None and not 1 <= request.shards <= len(files):
            raise ConfigError([f"--shards {request.shards}: choose 1 to {len(files)} (one input file or more per shard)"])
        if not Path(request.tokenizer_model).is_file():
            raise ConfigError([f"--tokenizer-model {request.tokenizer_model}: no such file"])
        array, merge, logs = render_scripts(request, files)
    except ConfigError as error:
        print(f"glm-launch prep: invalid request:\n{error}", file=sys.stderr)
        return 2
    if request.dry_run:
        print(array + "\n# --- then, with --dependency=afterok:<array job> ---\n" + merge, end="")
        return 0
    Path(logs).mkdir(parents=True, exist_ok=True)
    if "--container-mounts=" in array:  # a mount's source must exist (glm-prep creates it on the host)
        Path(request.output_prefix).resolve().parent.mkdir(parents=True, exist_ok=True)
    (Path(logs) / "tokenize.sbatch").write_text(array)
    (Path(logs) / "merge.sbatch").write_text(merge)
    ids = []
    for script, dependency in (("tokenize.sbatch", []),
                               ("merge.sbatch", ["--dependency=afterok:{}", "--kill-on-invalid-dep=yes"])):
        flags = [flag.format(*ids) for flag in dependency]
        result = subprocess.run(["sbatch", "--parsable", *flags, str(Path(logs) / script)],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            print(f"glm-launch prep: sbatch {script} failed: {result.stderr.strip()}", file=sys.stderr)
            return result.returncode
        ids.append(result.stdout.strip().split(";")[0])
    print(f"{ids[0]} {ids[1]}")
    return 0
