"""How jobs run Jupyter: the config that forces the token, and the port proven by its socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from nbtether import jupyter, jupyter_port

# What a Jupyter app named like jupyter_server's makes of the config files it finds, with
# jupyter_core's search path (importing jupyter_server itself takes seconds).
LOAD_TOKEN = (
    "from jupyter_core.application import JupyterApp\n"
    "class Server(JupyterApp):\n    name = 'jupyter-server'\n"
    "app = Server(); app.load_config_file(); print(repr(app.config.IdentityProvider.token))"
)


def loaded_token(home: Path, env: dict[str, str]) -> str:
    """The IdentityProvider.token that Jupyter's config loading ends with."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    out = subprocess.run([sys.executable, "-c", LOAD_TOKEN], env={**clean, "HOME": str(home),
                         **env}, capture_output=True, text=True, check=True, cwd=home)
    return out.stdout.strip()


def test_nbtethers_config_wins_over_a_user_config_that_disables_the_token(
    tmp_path: Path
) -> None:
    """With the job's config first in JUPYTER_CONFIG_PATH, `c.IdentityProvider.token = ''` in
    ~/.jupyter is overridden by the token from JUPYTER_TOKEN_FILE."""
    user = tmp_path / ".jupyter"
    user.mkdir()
    (user / "jupyter_server_config.py").write_text("c.IdentityProvider.token = ''\n")
    assert loaded_token(tmp_path, {}) == "''", "the user's config alone disables the token"
    private = tmp_path / "job" / "config"
    private.mkdir(parents=True)
    for name in jupyter.CONFIG_NAMES:
        (private / f"{name}.py").write_text(jupyter.CONFIG)
    token_file = tmp_path / "token"
    token_file.write_text("a" * 48)
    env = {"JUPYTER_CONFIG_PATH": str(private), "JUPYTER_TOKEN_FILE": str(token_file)}
    assert loaded_token(tmp_path, env) == repr("a" * 48)


def write_runtime_file(directory: Path, pid: int, port: int) -> None:
    (directory / f"jpserver-{pid}.json").write_text(json.dumps({"port": port, "pid": pid}))


def test_the_port_counts_once_the_process_itself_listens_on_it(tmp_path: Path) -> None:
    """A runtime file naming a port this process listens on gives that port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        write_runtime_file(tmp_path, os.getpid(), port)
        assert jupyter_port.held_port(os.getpid(), str(tmp_path)) is None, "bound, not listening"
        sock.listen()
        assert jupyter_port.held_port(os.getpid(), str(tmp_path)) == port


def test_a_port_another_process_listens_on_is_not_the_notebooks(tmp_path: Path) -> None:
    """Whoever else holds the port named in the runtime file, it is not taken for Jupyter."""
    other = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys; s = socket.socket(); "
         "s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None
        port = int(other.stdout.readline())
        write_runtime_file(tmp_path, os.getpid(), port)
        assert jupyter_port.held_port(os.getpid(), str(tmp_path)) is None
        assert jupyter_port.held_port(other.pid, str(tmp_path)) is None, "no file of its own"
    finally:
        other.communicate("")


def test_a_half_written_runtime_file_names_no_port(tmp_path: Path) -> None:
    """Jupyter writes the file in place: a partial file is read as not yet."""
    (tmp_path / "jpserver-7.json").write_text('{"port": 40')
    assert jupyter_port.runtime_port(7, str(tmp_path)) is None


def test_the_node_helper_prints_the_port_and_fails_when_jupyter_is_gone(tmp_path: Path) -> None:
    """Run as the batch script runs it (`python -c SOURCE PID DIR`): it waits for a listening
    process and prints its port, and exits 1 once the process has ended."""
    source = Path(jupyter_port.__file__).read_text()
    server = subprocess.Popen(
        [sys.executable, "-c", "import json, os, socket, sys; s = socket.socket(); "
         "s.bind(('127.0.0.1', 0)); s.listen(); "
         f"json.dump({{'port': s.getsockname()[1]}}, open(os.path.join({str(tmp_path)!r}, "
         "f'jpserver-{os.getpid()}.json'), 'w')); sys.stdin.read()"],
        stdin=subprocess.PIPE, text=True)
    try:
        found = subprocess.run([sys.executable, "-c", source, str(server.pid), str(tmp_path)],
                               capture_output=True, text=True, timeout=30)
        port = json.loads((tmp_path / f"jpserver-{server.pid}.json").read_text())["port"]
        assert (found.returncode, found.stdout.strip()) == (0, str(port))
    finally:
        server.communicate("")
    gone = subprocess.run([sys.executable, "-c", source, str(server.pid), str(tmp_path)],
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and gone.stdout == ""
