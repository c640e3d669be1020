"""Figure 3: readiness overhead, from "Jupyter answers on the node" to "the local port answers".

For each fresh session, one thread watches `ss -ltnpH` for a new listening socket of
hpcuser's Jupyter on a node address and then polls that Jupyter directly; another polls
the session's local port. Both poll every 10 ms with GET /api/status and the token; the
overhead is the difference of their first successes.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import threading
import time
from collections.abc import Callable

from tests.bench.common import BenchDaemon, FigureResult, Row, answers, median, poll_until, say
from tests.cluster import wait_for

SESSIONS = 3
RETRIES = 2
POLL = 0.01
TIMEOUT = 300.0  # queue wait + Jupyter start of one session, generously
NODE_ADDRESSES = ("127.0.0.2", "127.0.0.3")
PROCESS = re.compile(r'\("([^"]+)",pid=(\d+)')


def jupyter_sockets(uid: int) -> set[tuple[str, int]]:
    """(address, port) of sockets listening on a node address, owned by a Jupyter of `uid`."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        address, _, port = fields[3].rpartition(":")
        process = PROCESS.search(line)
        if address not in NODE_ADDRESSES or process is None or "jupyter" not in process[1]:
            continue
        try:
            owner = os.stat(f"/proc/{process[2]}").st_uid
        except FileNotFoundError:
            continue
        if owner == uid:
            found.add((address, int(port)))
    return found


def first_node_answer(uid: int, before: set[tuple[str, int]], token: str) -> float | None:
    """Monotonic time at which a new Jupyter first answered /api/status on its node."""
    new: set[tuple[str, int]] = set()

    def appeared() -> bool:
        """True once a Jupyter socket that was not there before listens."""
        new.update(jupyter_sockets(uid) - before)
        return bool(new)

    if poll_until(appeared, POLL, TIMEOUT) is None:
        return None
    address, port = sorted(new)[0]
    return poll_until(lambda: answers(address, port, token, timeout=5), POLL, TIMEOUT)


def in_thread(work: Callable[[], float | None]) -> Callable[[], float | None]:
    """Start `work` in a thread; the returned function joins it and gives its result."""
    box: list[float | None] = [None]
    thread = threading.Thread(target=lambda: box.__setitem__(0, work()), daemon=True)
    thread.start()

    def join() -> float | None:
        """Wait for the thread (bounded) and give its result."""
        thread.join(TIMEOUT + 60)
        return box[0]

    return join


def one_session(daemon: BenchDaemon, name: str, uid: int) -> dict[str, float]:
    """Drop a fresh session; measure when its Jupyter and then its local port first answer."""
    before = jupyter_sockets(uid)
    dropped = time.monotonic()
    port = daemon.drop_session(name, time="00:10:00")
    token = daemon.token(name)
    node = in_thread(lambda: first_node_answer(uid, before, token))
    local = in_thread(lambda: poll_until(lambda: answers("127.0.0.1", port, token, timeout=5),
                                         POLL, TIMEOUT))
    node_at, local_at = node(), local()
    if node_at is None or local_at is None:
        record = daemon.record(name) or {}
        raise TimeoutError(f"{name}: no answer (node {node_at}, local {local_at}); "
                           f"{record.get('phase')}: {record.get('message')}")
    daemon.remove(name)
    wait_for(lambda: daemon.record(name) is None, 120, message=f"{name} to be removed")
    return {"overhead": local_at - node_at, "node_answers": node_at - dropped,
            "local_answers": local_at - dropped}


def run(daemon: BenchDaemon) -> FigureResult:
    """Figure 3 over SESSIONS fresh sessions of a running daemon, one after another
    (a session that fails is noted and replaced, at most RETRIES times)."""
    uid = pwd.getpwnam(daemon.cluster.user).pw_uid
    samples: list[dict[str, float]] = []
    failures: list[str] = []
    for index in range(SESSIONS + RETRIES):
        if len(samples) == SESSIONS:
            break
        try:
            sample = one_session(daemon, f"ready-{index}", uid)
        except TimeoutError as exc:
            say(f"figure 3: session {index + 1} failed: {exc}")
            failures.append(str(exc))
            continue
        say(f"figure 3: session {index + 1}: overhead {sample['overhead'] * 1e3:.0f} ms "
            f"(Jupyter answered {sample['node_answers']:.1f} s after the file was dropped)")
        samples.append(sample)
    if not samples:
        raise RuntimeError(f"no session became ready: {failures}")
    overheads = [s["overhead"] for s in samples]
    value = median(overheads)
    result = FigureResult(3, "Readiness overhead", data={"samples": samples},
                          plot="bench-readiness.png",
                          notes=[f"replaced a failed session: {f}" for f in failures])
    result.rows.append(Row(
        "3 readiness", "median s from Jupyter answering on the node to the local port answering",
        f"{value:.3f}", "≤ 0.5", value <= 0.5,
        "each: " + ", ".join(f"{o:.3f}" for o in overheads)))
    drop_to_ready = median([s["local_answers"] for s in samples])
    result.rows.append(Row("3 readiness", "median s from dropping the file to the port answering",
                           f"{drop_to_ready:.1f}", "", None, "sbatch, scheduling, Jupyter start"))
    return result
