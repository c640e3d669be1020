"""Fixtures shared by all tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster import Cluster, ClusterStartError, start_cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The running mini-cluster, started by ``tests/cluster/start.sh`` unless it already
    runs. A cluster that cannot come up fails the tests that need it; it never skips them.

    The cluster stays up for reuse and nothing is cancelled at the end: other pytest
    processes (parallel workers, other people's runs) may have jobs on it, so every test
    cancels its own jobs.
    """
    failure = None
    try:
        running = start_cluster()
    except ClusterStartError as exc:
        failure = str(exc)
    if failure is not None:  # outside the except: the report shows no chained traceback
        pytest.fail(failure, pytrace=False)
    yield running
