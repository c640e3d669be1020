"""Fixtures shared by all tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.cluster import Cluster, ClusterStartError, start_cluster

# A pytest-xdist worker starts with COLUMNS=80 and LINES=24 in its environment. Rich fixes a
# console's width from COLUMNS when the console is made (nbtether.cli's, at import), which
# would override the width each CLI test gives its command: drop them, as a plain run has.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)


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
