"""The README's quickstart, run as written in a fresh HOME: no mini-cluster needed.

The block is taken from README.md itself, so the test follows the README, not a copy of it.
It runs in a copy of the repository (`pip install .` builds there) with a fresh venv first
on PATH, so its `pip` installs this nbtether for real. To keep it quick the venv sees the
system's packages (nothing is downloaded), its `pip` is the system's pip run by the venv's
Python (no ensurepip), and `PIP_NO_BUILD_ISOLATION` lets pip use the installed setuptools.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
import venv
from pathlib import Path

from tests.cluster import wait_for
from tests.e2e.harness import http_status, listening_addresses

REPO = Path(__file__).resolve().parents[2]
URL = re.compile(r"^\s*(http://127\.0\.0\.1:(\d+)/lab\?token=\S+)$")


def quickstart_block() -> str:
    """The first ```bash block of README.md's Quickstart section."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```bash\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert match, "README.md's Quickstart has no ```bash block"
    return match.group(1)


def copy_of_the_repository(target: Path) -> Path:
    """The tracked files of the working tree, as a fresh clone would have them."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


def test_the_readme_quickstart_runs_pasted_in_one_go_in_a_fresh_home(tmp_path: Path) -> None:
    """Install, `nbtether demo`: the URL appears and serves the notebook; Ctrl-C ends the
    demo with exit 0, its notebook process gone, its port closed and its file removed."""
    block = quickstart_block()
    assert "nbtether demo" in block
    home, clone, env_dir = tmp_path / "home", tmp_path / "clone", tmp_path / "venv"
    home.mkdir()
    clone.mkdir()
    copy_of_the_repository(clone)
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    (env_dir / "bin" / "pip").write_text(
        f"#!/bin/sh\nexec {env_dir / 'bin' / 'python'} -m pip \"$@\"\n")
    (env_dir / "bin" / "pip").chmod(0o755)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("NBTETHER_", "XDG_", "PYTHON", "BROWSER", "DISPLAY",
                                  "WAYLAND", "VIRTUAL_ENV", "PIP_"))}
    env.update(HOME=str(home), PATH=f"{env_dir / 'bin'}:{env['PATH']}",
               PIP_NO_BUILD_ISOLATION="1", PIP_DISABLE_PIP_VERSION_CHECK="1")

    started = time.monotonic()
    shell = subprocess.Popen(["bash", "-e", "-c", block], cwd=clone, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    assert shell.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(shell.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        found = wait_for(lambda: next((m for line in lines if (m := URL.match(line))), None),
                         timeout=300, interval=0.2, message="the demo's URL")
        url, port = found.group(1), int(found.group(2))
        token = url.split("token=", 1)[1]
        assert http_status(f"http://127.0.0.1:{port}/api/status", token) == 200
        assert listening_addresses(port) == {"127.0.0.1"}
        took = time.monotonic() - started
        jobs = home / ".local" / "state" / "nbtether" / "local" / "jobs"
        pids = [int(meta.stem) for meta in jobs.glob("*.json")]
        assert pids and all(Path(f"/proc/{pid}").exists() for pid in pids)
    finally:
        os.killpg(shell.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    assert shell.wait(timeout=60) == 0, "".join(lines)[-3000:]
    reader.join(timeout=5)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), timeout=15,
             message="the demo's Jupyter to be gone")
    assert not listening_addresses(port)
    assert list((home / ".config" / "nbtether" / "sessions.d").iterdir()) == []
    print(f"README quickstart: URL served {took:.1f}s after the paste")
