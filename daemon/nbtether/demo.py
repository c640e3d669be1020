"""`nbtether demo`: the main job in one command, on this machine.

It puts a session file for a local notebook in place, runs the daemon in the foreground,
shows the URL once the notebook answers, and on Ctrl-C deletes the file and waits until
the daemon has stopped the notebook and closed the port, before the daemon itself stops.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
from pathlib import Path

from rich.console import Console

from nbtether.app import Daemon
from nbtether.browser import open_url
from nbtether.config import Settings
from nbtether.errors import DemoUnavailable
from nbtether.install import jupyter_hint
from nbtether.state import Record

SESSION = "demo"
PORT = 8899  # the demo's port when it is free; any free port otherwise
CLEANUP_TIMEOUT = 30.0
SESSION_FILE = """\
# Written by `nbtether demo`, and deleted when it stops.
cluster: {cluster}
local_port: {port}
resources:
  time: "08:00:00"
jupyter:
  app: lab
"""


def local_cluster(settings: Settings) -> str:
    """The first `kind: local` cluster: the built-in one when there is no config file."""
    for name, cluster in settings.clusters.items():
        if cluster.kind == "local":
            return name
    raise DemoUnavailable(
        "the demo runs on a cluster of kind: local, and there is none "
        f"({settings.describe_clusters()}); add one under `clusters:`, e.g.  here: {{kind: local}}"
    )


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _any_free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def place_session(settings: Settings, cluster: str) -> Path:
    """Write the demo's session file unless one is there already."""
    file = settings.sessions_dir / f"{SESSION}.yaml"
    if not file.exists():
        settings.sessions_dir.mkdir(parents=True, exist_ok=True)
        port = PORT if _free(PORT) else _any_free_port()
        file.write_text(SESSION_FILE.format(cluster=cluster, port=port), encoding="utf-8")
    return file


def _last_lines(directory: Path, job_id: str | None, count: int = 5) -> list[str]:
    """The end of a local job's output (Jupyter's log), to show why the notebook failed."""
    try:
        text = (directory / f"job-{job_id}.out").read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-count:]


async def run_demo(
    settings: Settings, config_path: Path | None, out: Console, err: Console
) -> bool:
    """Run the demo until SIGINT, SIGTERM or SIGHUP, or until its notebook fails for good;
    False in that case."""
    cluster = local_cluster(settings)
    if importlib.util.find_spec("jupyterlab") is None:
        raise DemoUnavailable(f"the demo needs JupyterLab next to nbtether: {jupyter_hint()}")
    file = place_session(settings, cluster)
    daemon = Daemon(settings, config_path=config_path)
    failed = asyncio.Event()

    def show(before: str, record: Record) -> None:
        if record.name != SESSION:
            return
        if record.phase == "failed":  # nothing more will happen: say why and stop
            err.print(f"the demo notebook failed: {record.message}", markup=False)
            for line in _last_lines(daemon.store.root / "local" / SESSION, record.job_id
                                    or record.previous_job_id):
                err.print(f"  {line}", markup=False, highlight=False)
            failed.set()
            daemon.stopping.set()
            return
        if record.phase != "ready" or before == "handover":
            return
        out.print(f"\nThe notebook is ready at\n\n  {record.url}\n\nCtrl-C stops it.\n",
                  markup=False, highlight=False)
        if record.url is not None:
            asyncio.get_running_loop().run_in_executor(
                None, open_url, record.url, daemon.store.root / "open", SESSION)

    async def remove_notebook() -> None:
        err.print("stopping the demo notebook…", highlight=False)
        file.unlink(missing_ok=True)
        daemon.queue.add(SESSION)
        reconciler = daemon.reconciler
        assert reconciler is not None
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            # Polled: forgetting a session (job gone, port closed) raises no event of its own.
            while SESSION in reconciler.records or SESSION in reconciler.tunnels:  # noqa: ASYNC110
                await asyncio.sleep(0.1)

    daemon.phase_listeners.append(show)
    daemon.before_stop = remove_notebook
    err.print(f"nbtether demo: a notebook on this machine ({sys.executable}), from {file}",
              highlight=False)
    await daemon.run()
    return not failed.is_set()
