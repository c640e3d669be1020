"""Fixtures for end-to-end tests of the daemon on the mini-cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.cluster import Cluster
from tests.e2e.harness import Daemon

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own download cannot work offline


@pytest.fixture
def daemon(request: pytest.FixtureRequest, tmp_path: Path, cluster: Cluster) -> Iterator[Daemon]:
    """A started daemon with an empty sessions directory; its jobs are cancelled after.

    On SLURM, or on the scheduler named by indirect parametrization (`BOTH_SCHEDULERS`).
    """
    running = Daemon(tmp_path, cluster, scheduler=getattr(request, "param", "slurm"))
    running.start()
    yield running
    running.cleanup()


@pytest.fixture
def page() -> Iterator[Page]:
    """A fresh Chromium page (headless, no sandbox: the tests run as root)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_page()
        finally:
            browser.close()
