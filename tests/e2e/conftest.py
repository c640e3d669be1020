"""Fixtures for end-to-end tests of the daemon on the mini-cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster
from tests.e2e.harness import Daemon


@pytest.fixture
def daemon(request: pytest.FixtureRequest, tmp_path: Path, cluster: Cluster) -> Iterator[Daemon]:
    """A started daemon with an empty sessions directory; its jobs are cancelled after.

    On SLURM, or on the scheduler named by indirect parametrization (`BOTH_SCHEDULERS`).
    """
    running = Daemon(tmp_path, cluster, scheduler=getattr(request, "param", "slurm"))
    running.start()
    yield running
    running.cleanup()
