"""Figure 8: the login node over ten minutes, and slurmctld with a full queue.

Watcher: eight one-CPU sessions run for LOGIN_WINDOW seconds; the CPU time of the daemon's
watcher (the `bash` loop on the login node, which is this machine, found by its run
directory and its loop in its command line) is read from /proc, and afterwards the files
in the run directory are counted. It measures one process, so it needs no exclusive hold
of the cluster.

Full queue: eight sessions of 8 CPUs each, so that the two 16-CPU nodes run four and the
other four wait (`queued: Resources`); hpcuser's slurmctld RPCs (`sdiag`) over 120 s.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.bench.common import BenchDaemon, FigureResult, Row, running_daemon, say
from tests.bench.polling import WINDOW, _cpu_seconds, hpcuser_rpcs, wait_for_a_poll
from tests.cluster import Cluster, wait_for

SESSIONS = 8
FULL_CPUS = 8  # two such jobs fill a 16-CPU node
LOGIN_WINDOW = 600.0
START_TIMEOUT = 600.0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def watcher_pid(instance: str) -> int:
    """The login-node watcher of this daemon instance (hpcuser's bash on its run directory)."""
    result = subprocess.run(["pgrep", "-u", "hpcuser", "-f", f".nbtether/{instance}/run"],
                            capture_output=True, text=True, check=False)
    pids = [int(pid) for pid in result.stdout.split()
            if "read -r -t" in _cmdline(int(pid))]  # not a passing `rm` of that directory
    if len(pids) != 1:
        raise RuntimeError(f"expected one watcher of {instance}, found {pids}")
    return pids[0]


def phases(daemon: BenchDaemon, names: list[str]) -> dict[str, int]:
    """How many sessions are in each phase."""
    counts: dict[str, int] = {}
    for name in names:
        phase = daemon.phase(name) or "none"
        counts[phase] = counts.get(phase, 0) + 1
    return counts


def watcher(cluster: Cluster) -> FigureResult:
    """The watcher's CPU over LOGIN_WINDOW with eight sessions, and the run directory after."""
    with running_daemon(cluster, "login") as daemon:
        names = [f"w{i}" for i in range(SESSIONS)]
        for name in names:
            daemon.drop_session(name, time="01:00:00", mem="300M")
        daemon.wait_ready(names, START_TIMEOUT)
        say(f"figure 8: {SESSIONS} sessions ready; measuring the watcher for {LOGIN_WINDOW:g} s")
        pid = watcher_pid(daemon.instance)
        cpu, started = _cpu_seconds(pid), time.monotonic()
        time.sleep(LOGIN_WINDOW)
        elapsed = time.monotonic() - started
        percent = (_cpu_seconds(pid) - cpu) / elapsed * 100
        run_dir = f"~/.nbtether/{daemon.instance}/run"
        files = int(cluster.ssh(f"ls -A {run_dir} | wc -l").stdout.strip())
    result = FigureResult(8, "The login node over ten minutes",
                          data={"watcher_cpu_percent": percent, "run_dir_files": files,
                                "seconds": elapsed})
    result.rows += [
        Row("8 login node", "watcher CPU, % of one core", f"{percent:.3f}", "≤ 0.1",
            percent <= 0.1, f"utime+stime over {elapsed:.0f} s, {SESSIONS} ready sessions"),
        Row("8 login node", "files in the run directory afterwards", str(files),
            f"≤ {2 * SESSIONS}", files <= 2 * SESSIONS, "one .ready per live job"),
    ]
    return result


def full_queue(cluster: Cluster) -> FigureResult:
    """slurmctld RPCs per minute with four sessions running and four queued."""
    with running_daemon(cluster, "fullqueue") as daemon:
        names = [f"q{i}" for i in range(SESSIONS)]
        for name in names:
            daemon.drop_session(name, time="01:00:00", mem="300M", cpus=str(FULL_CPUS))
        wait_for(lambda: phases(daemon, names).get("ready", 0) >= SESSIONS // 2,
                 START_TIMEOUT, interval=1.0, message="half the sessions ready")
        wait_for_a_poll(cluster)
        mix = phases(daemon, names)
        before, started = hpcuser_rpcs(cluster), time.monotonic()
        time.sleep(WINDOW)
        elapsed = time.monotonic() - started
        per_minute = (hpcuser_rpcs(cluster) - before) / elapsed * 60
    say(f"figure 9: phases {mix}: {per_minute:.1f} RPCs/min")
    shape = f"{mix.get('ready', 0)} ready, {mix.get('pending', 0)} pending"
    result = FigureResult(9, "slurmctld RPCs with a full queue",
                          data={"phases": mix, "rpcs_per_minute": per_minute})
    result.rows.append(Row("9 full queue", "RPCs per minute, 8 sessions", f"{per_minute:.1f}",
                           "≤ 3", per_minute <= 3, f"{shape}, over {elapsed:.0f} s"))
    return result
