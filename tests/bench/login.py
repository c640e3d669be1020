"""Figure 8: ten minutes with a full queue, seen from the login node and from slurmctld.

Eight sessions ask for 8 CPUs each, so that the two 16-CPU nodes run four of them and the
other four wait (`queued: Resources`). Over LOGIN_WINDOW seconds: the CPU time of the
daemon's watcher (the `bash` loop on the login node, found by its run directory in its
command line), hpcuser's slurmctld RPCs (`sdiag`), and at the end the number of files in
the run directory.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.bench.common import BenchDaemon, FigureResult, Row, running_daemon, say
from tests.bench.polling import _cpu_seconds, hpcuser_rpcs
from tests.cluster import Cluster, wait_for

SESSIONS = 8
CPUS = 8  # two such jobs fill a 16-CPU node
LOGIN_WINDOW = 600.0
START_TIMEOUT = 600.0


def watcher_pid(instance: str) -> int:
    """The login-node watcher of this daemon instance (hpcuser's bash on its run directory)."""
    result = subprocess.run(["pgrep", "-u", "hpcuser", "-f", f".nbtether/{instance}/run"],
                            capture_output=True, text=True, check=False)
    pids = [int(pid) for pid in result.stdout.split()
            if "read -r -t" in _cmdline(int(pid))]  # not a passing `rm` of that directory
    if len(pids) != 1:
        raise RuntimeError(f"expected one watcher of {instance}, found {pids}")
    return pids[0]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def phases(daemon: BenchDaemon, names: list[str]) -> dict[str, int]:
    """How many sessions are in each phase."""
    counts: dict[str, int] = {}
    for name in names:
        phase = daemon.phase(name) or "none"
        counts[phase] = counts.get(phase, 0) + 1
    return counts


def run(cluster: Cluster) -> FigureResult:
    """Measure the watcher's CPU, the RPC rate and the run directory with a full queue."""
    with running_daemon(cluster, "login") as daemon:
        names = [f"q{i}" for i in range(SESSIONS)]
        for name in names:
            daemon.drop_session(name, time="01:00:00", mem="300M", cpus=str(CPUS))
        wait_for(lambda: phases(daemon, names).get("ready", 0) >= SESSIONS // 2
                 and phases(daemon, names).get("pending", 0) >= 1,
                 START_TIMEOUT, interval=1.0, message="half the sessions ready, others queued")
        mix = phases(daemon, names)
        say(f"figure 8: phases {mix}; measuring for {LOGIN_WINDOW:g} s")
        pid = watcher_pid(daemon.instance)
        cpu, rpcs, started = _cpu_seconds(pid), hpcuser_rpcs(cluster), time.monotonic()
        time.sleep(LOGIN_WINDOW)
        elapsed = time.monotonic() - started
        cpu_percent = (_cpu_seconds(pid) - cpu) / elapsed * 100
        per_minute = (hpcuser_rpcs(cluster) - rpcs) / elapsed * 60
        run_dir = f"~/.nbtether/{daemon.instance}/run"
        files = int(cluster.ssh(f"ls -A {run_dir} | wc -l").stdout.strip())
        end_mix = phases(daemon, names)
    result = FigureResult(8, "Ten minutes with a full queue: login node and slurmctld",
                          data={"phases": mix, "phases_after": end_mix,
                                "watcher_cpu_percent": cpu_percent,
                                "rpcs_per_minute": per_minute, "run_dir_files": files})
    shape = f"{mix.get('ready', 0)} ready, {mix.get('pending', 0)} pending"
    result.rows += [
        Row("8 login node", "watcher CPU, % of one core", f"{cpu_percent:.3f}", "≤ 0.1",
            cpu_percent <= 0.1, f"utime+stime over {elapsed:.0f} s, {SESSIONS} sessions"),
        Row("8 login node", "files in the run directory afterwards", str(files),
            f"≤ {2 * SESSIONS}", files <= 2 * SESSIONS, ".ready and .end of live jobs only"),
        Row("8 full queue", "RPCs per minute, nbtether", f"{per_minute:.1f}", "≤ 3",
            per_minute <= 3, f"{shape}, over {elapsed:.0f} s"),
    ]
    return result
