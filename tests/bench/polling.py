"""Figures 5 and 6: what the daemon costs slurmctld and this machine in steady state.

slurmctld counts RPCs per user (`sdiag`). With 1, 8 and 32 ready sessions, the hpcuser
count is read twice, 120 s apart, with the daemon running; then the daemon is stopped
with SIGTERM (its jobs keep running) and batchspawner's way of watching the same jobs
(`squeue -j <id>` per job every 30 s) runs for the same 120 s. With 32 sessions the
daemon's RSS and CPU time are sampled over 60 s of its window.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.bench.common import BenchDaemon, FigureResult, Row, running_daemon, say
from tests.cluster import Cluster, wait_for

WINDOW = 120.0
DAEMON_POLL = 60.0  # the daemon's squeue interval (poll_interval's default)
POLL_PERIOD = 30.0  # batchspawner's squeue interval
USAGE_SECONDS = 60.0
BATCH = 8  # sessions started at a time
READY_TIMEOUT = 600.0


def hpcuser_rpcs(cluster: Cluster) -> int:
    """slurmctld's count of RPCs from the user ("Remote Procedure Call statistics by user")."""
    out = cluster.admin("sdiag").stdout
    section = out.partition("Remote Procedure Call statistics by user")[2]
    for line in section.splitlines():
        match = re.match(r"\s*(\S+)\s+\(\s*\d+\)\s+count:(\d+)", line)
        if match and match[1] == cluster.user:
            return int(match[2])
    return 0


def wait_for_a_poll(cluster: Cluster) -> None:
    """Return half a poll period after the user's RPC count last moved, so that a window
    of whole periods holds exactly one poll per period (bounded by two periods)."""
    start = hpcuser_rpcs(cluster)
    wait_for(lambda: hpcuser_rpcs(cluster) != start, 2 * DAEMON_POLL, interval=0.5,
             message="the daemon's next squeue")
    time.sleep(DAEMON_POLL / 2)


def rpcs_per_minute(cluster: Cluster, during: Callable[[], None] = lambda: None) -> float:
    """The user's RPCs per minute over WINDOW seconds while `during` runs (it must not
    outlast the window)."""
    before, started = hpcuser_rpcs(cluster), time.monotonic()
    during()
    time.sleep(max(0.0, WINDOW - (time.monotonic() - started)))
    after, elapsed = hpcuser_rpcs(cluster), time.monotonic() - started
    if after < before:
        raise RuntimeError("sdiag's counters were reset during the window (midnight UTC?)")
    return (after - before) / elapsed * 60


def batchspawner_script(job_ids: list[str]) -> str:
    """One `squeue -j` per job every POLL_PERIOD s, WINDOW / POLL_PERIOD rounds."""
    rounds = int(WINDOW / POLL_PERIOD)
    ids = " ".join(shlex.quote(j) for j in job_ids)
    return (f"for r in $(seq {rounds}); do for id in {ids}; do squeue -h -j $id -o %T "
            f">/dev/null; done; [ $r -lt {rounds} ] && sleep {POLL_PERIOD:g}; done; true")


def batchspawner_per_minute(cluster: Cluster, job_ids: list[str]) -> float:
    """RPCs per minute of batchspawner's polling for these jobs (daemon stopped)."""
    script = batchspawner_script(job_ids)

    def poll() -> None:
        """The whole batchspawner-style loop, run on the login node."""
        cluster.ssh(script, timeout=WINDOW + 60)

    return rpcs_per_minute(cluster, poll)


@dataclass
class Usage:
    """The daemon's memory and CPU over a period."""

    rss_mb: float
    cpu_percent: float
    rss_samples: list[float]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    """VmRSS of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def daemon_usage(pid: int, seconds: float = USAGE_SECONDS) -> Usage:
    """VmRSS (largest of samples every 5 s) and (utime+stime) delta / wall time."""
    cpu, started = _cpu_seconds(pid), time.monotonic()
    samples = [_rss_mb(pid)]
    for _ in range(int(seconds / 5)):
        time.sleep(5)
        samples.append(_rss_mb(pid))
    percent = (_cpu_seconds(pid) - cpu) / (time.monotonic() - started) * 100
    return Usage(max(samples), percent, samples)


def grow_to(daemon: BenchDaemon, count: int) -> list[str]:
    """Add sessions s00…, BATCH at a time, until `count` are ready; returns their names."""
    names = [f"s{i:02d}" for i in range(count)]
    existing = {p.stem for p in daemon.sessions.glob("*.yaml")}
    new = [n for n in names if n not in existing]
    for first in range(0, len(new), BATCH):
        for name in new[first:first + BATCH]:
            daemon.drop_session(name, time="01:00:00", mem="300M")
        daemon.wait_ready(names[:len(existing) + first + BATCH], READY_TIMEOUT)
        say(f"figure 5: {min(len(existing) + first + BATCH, count)} sessions ready")
    return names


def job_ids(daemon: BenchDaemon, names: list[str]) -> list[str]:
    """The current job of each session."""
    return [str((daemon.record(name) or {})["job_id"]) for name in names]


def measure(cluster: Cluster, daemon: BenchDaemon, count: int, usage: bool) -> dict[str, object]:
    """Daemon vs batchspawner RPCs with `count` ready sessions (and usage if asked);
    the daemon is restarted afterwards."""
    names = grow_to(daemon, count)
    wait_for_a_poll(cluster)
    box: list[Usage] = []
    sampler = threading.Thread(target=lambda: box.append(daemon_usage(daemon.pid)))
    ours = rpcs_per_minute(cluster, sampler.start if usage else lambda: None)
    if usage:
        sampler.join()
    jobs = job_ids(daemon, names)
    daemon.stop(signal.SIGTERM)
    theirs = batchspawner_per_minute(cluster, jobs)
    daemon.start()
    say(f"figure 5: {count} sessions: nbtether {ours:.1f}/min, batchspawner {theirs:.1f}/min")
    return {"count": count, "nbtether": ours, "batchspawner": theirs,
            "usage": box[0] if box else None}


def free_cpus(cluster: Cluster) -> int:
    """Idle CPUs on the cluster (sinfo's %C: allocated/idle/other/total)."""
    out = cluster.admin("sinfo", "-h", "-o", "%C").stdout.split()
    return sum(int(field.split("/")[1]) for field in out)


def run(cluster: Cluster, counts: list[int], label: str) -> list[dict[str, object]]:
    """Measure each count in turn with one daemon whose sessions accumulate."""
    wait_for(lambda: free_cpus(cluster) >= max(counts), 300, interval=5,
             message=f"{max(counts)} idle CPUs")
    with running_daemon(cluster, label) as daemon:
        return [measure(cluster, daemon, count, usage=count >= 32)
                for count in counts]


def results(samples: list[dict[str, object]]) -> list[FigureResult]:
    """Figures 5 and 6 from the measurements of all counts."""
    rpc = FigureResult(5, "slurmctld RPCs per minute", plot="bench-rpcs.png",
                       data={"samples": [{k: v for k, v in s.items() if k != "usage"}
                                         for s in samples]})
    ours = [float(str(s["nbtether"])) for s in samples]
    for sample, value in zip(samples, ours, strict=True):
        theirs = float(str(sample["batchspawner"]))
        times = theirs / max(value, 0.1)
        rpc.rows.append(Row(
            "5 RPCs", f"per minute, {sample['count']} session(s): nbtether", f"{value:.1f}",
            "≤ 3", value <= 3, f"batchspawner {theirs:.1f}/min ({times:.0f}x)"))
    spread = max(ours) - min(ours)
    rpc.rows.append(Row("5 RPCs", "nbtether: most minus fewest sessions", f"{spread:.1f}",
                        "flat (≤ 1)", spread <= 1.0, "per minute"))
    figures = [rpc]
    usage = next((s["usage"] for s in samples if isinstance(s["usage"], Usage)), None)
    if isinstance(usage, Usage):
        idle = FigureResult(6, "Daemon footprint with 32 idle sessions",
                            data={"rss_samples": usage.rss_samples})
        idle.rows.append(Row("6 footprint", "RSS MB (VmRSS)", f"{usage.rss_mb:.0f}", "≤ 100",
                             usage.rss_mb <= 100, "largest of samples every 5 s"))
        idle.rows.append(Row("6 footprint", "CPU % over 60 s", f"{usage.cpu_percent:.2f}",
                             "≤ 1", usage.cpu_percent <= 1, "utime+stime delta / wall time"))
        figures.append(idle)
    return figures
