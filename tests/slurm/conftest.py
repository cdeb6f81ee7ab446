"""The `local_slurm` fixture: one real Slurm (2 simulated nodes) for the whole session."""

import pytest

from slurm.local_slurm import LocalSlurm, SlurmUnavailable


@pytest.fixture(scope="session")
def local_slurm():
    cluster = LocalSlurm(nodes=2, cpus_per_node=4)
    try:
        cluster.start()
    except SlurmUnavailable as error:
        pytest.skip(f"no local Slurm: {error}")
    try:
        yield cluster
    finally:
        cluster.stop()
