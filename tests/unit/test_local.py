"""The local backend's process identity: what tells a job's process from a reused pid."""

from __future__ import annotations

import os
import subprocess

from nbtether.backends.local import process_identity


def test_a_running_process_keeps_its_identity() -> None:
    """The identity of a live process is the same each time it is read."""
    identity = process_identity(os.getpid())
    assert identity is not None and identity == process_identity(os.getpid())


def test_another_process_has_another_identity_and_an_ended_one_none() -> None:
    """A different process never shares the identity; a reaped process has none."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        identity = process_identity(child.pid)
        assert identity is not None and identity != process_identity(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert process_identity(child.pid) is None


def test_a_zombie_has_no_identity() -> None:
    """An exited but unreaped child is not running: it has no identity to match."""
    child = subprocess.Popen(["true"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, left unreaped
    try:
        assert process_identity(child.pid) is None
    finally:
        child.wait()
