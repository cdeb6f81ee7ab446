"""The `local_slurm` fixture: one real Slurm for the whole session, 3 simulated nodes (jobs take 2;
the third is where a requeued job goes when a node is excluded), each with its own TMPDIR."""

import pytest

from slurm.local_slurm import LocalSlurm, SlurmUnavailable


@pytest.fixture(scope="session")
def local_slurm():
    cluster = LocalSlurm(nodes=3, cpus_per_node=4)
    try:
        cluster.start()
    except SlurmUnavailable as error:
        pytest.skip(f"no local Slurm: {error}")
    try:
        yield cluster
    finally:
        cluster.stop()
