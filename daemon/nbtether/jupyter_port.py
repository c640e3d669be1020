"""Which port a Jupyter server serves on: read from its own runtime file, proven by its socket.

Jupyter binds a port the kernel picks (`--port=0`) and names it in `jpserver-<pid>.json`,
a 0600 file in the job's private runtime directory. That file is written just before the
socket is bound, so the port counts only once the Jupyter process itself holds a listening
socket on it (its inode among the process's open files): a program of another user that
took the port cannot pass for the notebook.

The batch script runs this file on the compute node (`python -c <source> PID RUNTIME_DIR`,
printing the port), and the local backend imports it; so it uses the standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time

POLL = 0.1  # seconds between looks while Jupyter starts
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def runtime_port(pid: int, runtime_dir: str) -> int | None:
    """The port that `jpserver-<pid>.json` names, if the file is complete."""
    try:
        with open(os.path.join(runtime_dir, f"jpserver-{pid}.json")) as handle:
            port = json.load(handle)["port"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not written yet, or half written
    return port if isinstance(port, int) and 0 < port < 65536 else None


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets the process holds open."""
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    return inodes


def listening_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets (IPv4 and IPv6) listening on `port`."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == _LISTEN \
                    and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def held_port(pid: int, runtime_dir: str) -> int | None:
    """Jupyter's port, once its own process listens on it; None until then."""
    port = runtime_port(pid, runtime_dir)
    if port is None or not listening_inodes(port) & socket_inodes(pid):
        return None
    return port


def running(pid: int) -> bool:
    """The process exists and is not a zombie (whose sockets are already gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main(argv: list[str]) -> int:
    """Wait until Jupyter (pid argv[0]) listens on the port of its runtime file; print it.

    Exit 1 if the process ends first.
    """
    pid, runtime_dir = int(argv[0]), argv[1]
    while running(pid):
        port = held_port(pid, runtime_dir)
        if port is not None:
            print(port)
            return 0
        time.sleep(POLL)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
