"""`python -m tests.bench [--only GROUP,…] [--no-docs]`: run the benchmarks, print the table,
write docs/benchmarks.md.

Groups (each holds /tmp/nbtether-bench.lock while it runs, waiting for pytest runs first):
`tunnel` (figures 1, 2, 7), `readiness` (3), `walltime` (4), `rpcs` (5, 6), `login` (8),
`queue` (9), `idle` (10).
`login` measures one process on the login node and takes no hold; `idle` runs the daemon in
the simulated world (tests/sim) and needs no cluster.
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable

from tests.bench import idle, login, polling, readiness, report, tunnels, walltime
from tests.bench.common import (
    FigureResult,
    Hold,
    Row,
    exclusive,
    install_signal_handlers,
    running_daemon,
    say,
)
from tests.cluster import Cluster, start_cluster

GROUPS = ("tunnel", "readiness", "walltime", "rpcs", "login", "queue", "idle")
ON_THE_CLUSTER = set(GROUPS) - {"idle"}
COMMAND = "python -m tests.bench"


def noted(results: list[FigureResult], *holds: Hold) -> list[FigureResult]:
    """Attach the holds' interference warnings to the results."""
    for hold in holds:
        if note := hold.note():
            for result in results:
                result.notes.append(note)
    return results


def tunnel_group(cluster: Cluster, groups: set[str]) -> list[FigureResult]:
    """Figures 1, 2, 7 and 3 share one daemon (and one hold of the lock)."""
    results = []
    with (exclusive("tunnel/readiness") as hold,
          running_daemon(cluster, "tunnel", tunnels.in_daemon_cluster(cluster)) as daemon):
        if "tunnel" in groups:
            results += guarded("tunnel", lambda: tunnels.run(cluster, daemon))
        if "readiness" in groups:
            results += guarded("readiness", lambda: [readiness.run(daemon)])
    return noted(results, hold)


def walltime_group(cluster: Cluster) -> list[FigureResult]:
    """Figure 4."""
    with exclusive("walltime") as hold, running_daemon(cluster, "walltime") as daemon:
        results = [walltime.run(cluster, daemon)]
    return noted(results, hold)


def rpcs_group(cluster: Cluster) -> list[FigureResult]:
    """Figures 5 and 6, in two holds of the lock: 1 and 8 sessions, then 32."""
    with exclusive("rpcs 1+8") as small:
        samples = polling.run(cluster, [1, 8], "rpcs")
    with exclusive("rpcs 32") as large:
        samples += polling.run(cluster, [32], "rpcs32")
    return noted(polling.results(samples), small, large)


def queue_group(cluster: Cluster) -> list[FigureResult]:
    """Figure 9."""
    with exclusive("full queue") as hold:
        results = [login.full_queue(cluster)]
    return noted(results, hold)


def login_group(cluster: Cluster) -> list[FigureResult]:
    """Figure 8: the watcher's own CPU time, which other runs on the machine do not inflate."""
    return [login.watcher(cluster)]


def guarded(name: str, work: Callable[[], list[FigureResult]]) -> list[FigureResult]:
    """Run one group; a failure becomes a row in the table instead of ending the run."""
    try:
        return work()
    except Exception as exc:
        traceback.print_exc()
        failed = FigureResult(0, f"{name} failed")
        failed.rows.append(Row(name, "failed", type(exc).__name__, "", False, str(exc)[:200]))
        return [failed]


def main() -> int:
    """Run the selected groups against the mini-cluster and report."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--only", default=",".join(GROUPS),
                        help=f"comma-separated groups (default: all of {','.join(GROUPS)})")
    parser.add_argument("--no-docs", action="store_true", help="only print the table")
    args = parser.parse_args()
    groups = {g.strip() for g in args.only.split(",") if g.strip()}
    if unknown := groups - set(GROUPS):
        parser.error(f"unknown group(s): {', '.join(sorted(unknown))}")
    install_signal_handlers()
    started = time.monotonic()
    results: list[FigureResult] = []
    if groups & ON_THE_CLUSTER:
        say("starting the mini-cluster (tests/cluster/start.sh)")
        cluster = start_cluster()
        if groups & {"tunnel", "readiness"}:
            results += guarded("tunnel", lambda: tunnel_group(cluster, groups))
        if "walltime" in groups:
            results += guarded("walltime", lambda: walltime_group(cluster))
        if "rpcs" in groups:
            results += guarded("rpcs", lambda: rpcs_group(cluster))
        if "login" in groups:
            results += guarded("login", lambda: login_group(cluster))
        if "queue" in groups:
            results += guarded("queue", lambda: queue_group(cluster))
    if "idle" in groups:
        results += guarded("idle", lambda: [idle.run()])
    report.print_results(results)
    say(f"measured in {(time.monotonic() - started) / 60:.0f} minutes")
    if not args.no_docs:
        failed = [r for r in results if not r.number]
        stored = report.save_results(results)
        say(f"wrote {report.write_page(stored, failed, COMMAND)}")
    return 0 if all(row.met is not False for r in results for row in r.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
