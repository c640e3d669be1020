"""A real `nbtether run` process with only a `kind: local` cluster: no mini-cluster needed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

from tests.cluster import Cluster
from tests.e2e.harness import Daemon

LOCAL_SESSION = """\
cluster: here
local_port: {port}
resources:
  time: "00:15:00"
jupyter:
  app: lab
  root_dir: {root_dir}
"""


def local_session_yaml(port: int, root_dir: Path) -> str:
    """A session file for the local cluster, serving `root_dir`."""
    return LOCAL_SESSION.format(port=port, root_dir=root_dir)


class LocalDaemon(Daemon):
    """The e2e harness's daemon, configured with one local cluster named `here`."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, Cluster())  # Cluster() only describes; it is never contacted
        self.config.write_text(
            f"sessions_dir: {self.sessions}\nstate_dir: {self.state}\n"
            "clusters:\n  here:\n    kind: local\n"
        )

    def local_pids(self) -> list[int]:
        """Pids of the notebooks the local backend still tracks."""
        pids = []
        for meta in (self.state / "local" / "jobs").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                pids.append(int(json.loads(meta.read_text())["pid"]))
        return pids

    def cleanup(self) -> None:
        """Stop the daemon and kill the notebooks it left running."""
        if self.process is not None:
            self.stop(signal.SIGKILL)
        for pid in self.local_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
