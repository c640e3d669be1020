"""Fixtures for end-to-end tests of the daemon on the mini-cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster
from tests.e2e.harness import Daemon


@pytest.fixture
def daemon(tmp_path: Path, cluster: Cluster) -> Iterator[Daemon]:
    """A started daemon with an empty sessions directory; its jobs are cancelled after."""
    running = Daemon(tmp_path, cluster)
    running.start()
    yield running
    running.cleanup()
