"""The results as a table on stdout and as docs/benchmarks.md with PNG plots in docs/."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tests.bench.common import FigureResult, Row, percentile

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGE = DOCS / "benchmarks.md"
STORE = DOCS / "benchmarks.json"  # the latest measurement of each figure
KEEP_MARKER = "<!-- Written by hand below this line; `python -m tests.bench` keeps it. -->"
MET = {True: "met", False: "NOT MET", None: ""}


def _output(argv: list[str]) -> str:
    """A command's stdout and stderr, or why it could not run."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"({exc})"
    return (result.stdout + result.stderr).strip()


def _cpu_model() -> str:
    """lscpu's model name."""
    for line in _output(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    jupyter = _output(["su", "-", "hpcuser", "-c",
                       "~/jupyter_env/bin/python -m pip show jupyter_server 2>/dev/null"
                       " | sed -n 's/^Version: //p'"])
    return {
        "CPU": f"{_cpu_model()}, nproc = {_output(['nproc'])}",
        "memory (free -h)": " ".join(_output(["free", "-h"]).splitlines()[1].split()[:4]),
        "kernel": platform.release(),
        "Python": sys.version.split()[0],
        "asyncssh": importlib.metadata.version("asyncssh"),
        "cryptography": importlib.metadata.version("cryptography"),
        "OpenSSH": _output(["ssh", "-V"]),
        "SLURM": _output(["sinfo", "-V"]),
        "jupyter_server (on the nodes)": jupyter or "unknown",
    }


def table(rows: list[Row]) -> str:
    """The results as aligned plain text."""
    header = ("figure", "metric", "value", "target", "", "detail")
    lines = [header] + [(r.figure, r.metric, r.value, r.target, MET[r.met], r.detail)
                        for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False))
                     + "  " + line[-1] for line in lines)


def markdown_table(rows: list[Row]) -> str:
    """The results as a Markdown table."""
    out = ["| figure | metric | value | target | | detail |", "|---|---|---|---|---|---|"]
    out += [f"| {r.figure} | {r.metric} | **{r.value}** | {r.target} | {MET[r.met]} | "
            f"{r.detail} |" for r in rows]
    return "\n".join(out)


# --- plots --------------------------------------------------------------------------------


def _save(figure: Any, name: str) -> None:
    """Write a matplotlib figure to docs/ as PNG and free it."""
    figure.tight_layout()
    figure.savefig(DOCS / name, dpi=110)
    plt.close(figure)


def plot_throughput(result: FigureResult) -> None:
    """Each run's MB/s for both tunnels, whole request and body only."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, key, label in zip(axes, ("total_mb_s", "body_mb_s"),
                              ("whole request", "after the first byte"), strict=True):
        for index, values in enumerate(result.data[key].values()):
            ax.scatter([index] * len(values), values, alpha=0.7)
            ax.hlines(sorted(values)[len(values) // 2], index - 0.25, index + 0.25, colors="k")
        ax.set_xticks(range(len(result.data[key])), list(result.data[key]))
        ax.set_title(label)
        ax.set_xlim(-0.6, len(result.data[key]) - 0.4)
    axes[0].set_ylabel("MB/s (300 MiB download)")
    fig.suptitle(f"Throughput: nbtether ÷ OpenSSH = {result.data['ratio']:.2f} (medians)")
    _save(fig, "bench-throughput.png")


def plot_latency(result: FigureResult) -> None:
    """Latency distributions per tunnel and mode, with p50 and p99 marked."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, mode in zip(axes, ("keep-alive", "new connection"), strict=True):
        samples = result.data[mode]
        names = list(samples)
        ax.boxplot([[v * 1e3 for v in samples[n]] for n in names], whis=(1, 99),
                   showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), names)
        for index, name in enumerate(names, 1):
            for pct in (50, 99):
                value = percentile(samples[name], pct) * 1e3
                ax.annotate(f"p{pct} {value:.2f}", (index + 0.27, value), fontsize=7)
        ax.set_yscale("log")
        ax.set_title(mode)
        ax.set_ylabel("ms per GET /api/status (log scale)")
    fig.suptitle("Latency of 200 small requests per tunnel (whiskers: p1 to p99)")
    _save(fig, "bench-latency.png")


def plot_readiness(result: FigureResult) -> None:
    """Per-session overhead between Jupyter answering on its node and on the local port."""
    samples = result.data["samples"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(range(1, len(samples) + 1), [s["overhead"] * 1e3 for s in samples])
    ax.axhline(500, color="r", linestyle="--", label="target 500 ms")
    ax.set_xlabel("fresh session")
    ax.set_ylabel("ms")
    ax.set_xticks(range(1, len(samples) + 1))
    ax.legend()
    ax.set_title("Readiness overhead (local port minus node)")
    _save(fig, "bench-readiness.png")


def plot_walltime(result: FigureResult) -> None:
    """Reachability timeline of each scenario across its walltime end."""
    fig, ax = plt.subplots(figsize=(9, 2.8))
    names = [n for n in ("handover", "no-handover", "manual") if n in result.data]
    for row, name in enumerate(names):
        data = result.data[name]
        ax.broken_barh([(0, data["probed_for"])], (row - 0.35, 0.7), color="tab:green")
        ax.broken_barh([(a, b - a) for a, b in data["outages"]], (row - 0.35, 0.7),
                       color="tab:red")
        ax.annotate(f"{data['unreachable']:.1f} s unreachable",
                    (data["probed_for"] + 2, row), va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("seconds since probing started (green: answered, red: did not)")
    ax.set_xlim(0, max(result.data[n]["probed_for"] for n in names) * 1.3)
    ax.set_title("Reachability across one walltime end, probed every 0.2 s")
    _save(fig, "bench-walltime.png")


def plot_rpcs(result: FigureResult) -> None:
    """RPCs per minute against the number of sessions, nbtether vs batchspawner."""
    samples = result.data["samples"]
    counts = [s["count"] for s in samples]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, marker in (("nbtether", "o"), ("batchspawner", "s")):
        ax.plot(counts, [s[key] for s in samples], marker=marker, label=key)
    ax.axhline(3, color="r", linestyle="--", label="target: 3 / min")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("sessions (ready, idle)")
    ax.set_ylabel("slurmctld RPCs per minute (hpcuser)")
    ax.legend()
    ax.set_title("Load on slurmctld")
    _save(fig, "bench-rpcs.png")


PLOTS: dict[int, Callable[[FigureResult], None]] = {
    1: plot_throughput, 2: plot_latency, 3: plot_readiness, 4: plot_walltime, 5: plot_rpcs,
}


# --- the page -------------------------------------------------------------------------------

EXPLAIN = {
    1: "A 300 MiB file of random bytes in hpcuser's home is downloaded with "
       "`GET /files/<file>?token=…` through the daemon's port and through "
       "`ssh -N -L <port>:<node>:<jupyter port> -p 2222 … hpcuser@127.0.0.1` to the same "
       "node and port (node and port from the daemon's state record), alternating, after one "
       "warm-up each. Jupyter streams the file from disk (its `/files/` handler is a static "
       "file handler); the body-only rate leaves out the request and the channel open.",
    2: "200 `GET /api/status` with `Authorization: token …` per tunnel, over one keep-alive "
       "connection (http.client) and with a new connection each, in alternating blocks of 20 "
       "after 10 warm-up requests. Percentiles are nearest-rank. Three tunnels: the daemon's "
       "port (connections handed to its OpenSSH master), `ssh -N -L` to the same notebook, "
       "and the port of a second session of the same daemon on a cluster entry with "
       "`use_openssh: false` (the daemon copies the bytes itself, through asyncssh).",
    3: "For each fresh session, one thread polls `ss -ltnpH` every 10 ms for a new listening "
       "socket of hpcuser's Jupyter on 127.0.0.2/127.0.0.3 and then polls that Jupyter "
       "directly every 10 ms; another thread polls the local port every 10 ms. Both ask "
       "`/api/status` with the token; the figure is the difference of their first 200s.",
    4: "Three scenarios side by side, each probed every 0.2 s (a probe not answered within "
       "1 s fails; unreachable time is the time covered by failed probes): nbtether with "
       "handover (`time: \"00:03:00\"`, `handover: \"75s\"`), nbtether without "
       "(`time: \"00:01:00\"`, `handover: \"0s\"`), and the tutorial's manual cycle at its "
       "best: `squeue -j` every 30 s to notice the end, `sbatch` of the same script, a look "
       "at the job's node/port file every second, and a new `ssh -N -L`. How long the "
       "manual cycle takes to notice the end depends on the phase of its 30 s poll (0 to "
       "30 s, by luck), so it is also given as its average: 15 s plus the measured restore. "
       "How much of its walltime the handed-over job kept (and the kernel in it) is its "
       "`ElapsedRaw` against its `TimelimitRaw` in `sacct`: the successor waits, unrouted, "
       "and the switch comes a few seconds before the end.",
    5: "`sdiag` \"Remote Procedure Call statistics by user\", hpcuser's count read twice "
       "120 s apart (the window starts half a poll period after a poll, so it holds exactly "
       "two of the daemon's 60 s polls) with 1, 8 and 32 ready sessions; then the daemon "
       "is stopped with SIGTERM (jobs keep running) and batchspawner's way, one "
       "`squeue -j <id>` per job every 30 s, runs for the same jobs over the same window.",
    6: "With 32 ready, idle sessions: VmRSS from /proc/<pid>/status every 5 s, and "
       "(utime + stime) from /proc/<pid>/stat over 60 s, divided by 60 s.",
    7: "200 `GET /api/status` started at once from 200 threads, each on a new connection; "
       "then 50 downloads of the 300 MiB file (5 at a time) that read 1 MiB and close the "
       "socket, as a browser does when a download is cancelled. Afterwards the TCP "
       "connections from the login node's sshd to the Jupyter port "
       "(`ss -tnp state established '( dport = :<port> )'`, sshd processes) must return "
       "to their count before the test.",
    8: "With eight ready sessions, (utime + stime) of the daemon's watcher, the `bash` loop "
       "on the login node (/proc/<pid>/stat; the login node is this machine), over 600 s; "
       "afterwards the files in the run directory.",
    10: "The real daemon in the simulated world of tests/sim (virtual time; a simulated "
        "SLURM whose queue waits are up to 120 s), one session of 4 CPUs with 8-hour jobs "
        "and a 10-minute handover, for seven days from Monday 09:00. On each weekday the "
        "user works in three bursts (09:00 to 10:30, 13:30 to 15:00, 19:00 to 20:00): the page is "
        "opened at the start, then code runs every ten minutes; nothing happens at the "
        "weekend. Always on: `start: always`, no `idle_stop`. With idle_stop: "
        "`start: on_demand` and `idle_stop: 1h`. Core-hours are the running time of every "
        "job the simulated SLURM ran, times 4; the wait is from opening the page to `ready` "
        "(looked at every 5 s). No cluster is needed (`--only idle`).",
    9: "Eight sessions of 8 CPUs each: the two 16-CPU nodes run four, the other four wait "
       "(`queued: Resources`). hpcuser's slurmctld RPCs (`sdiag`) over 120 s, starting half "
       "a poll period after a poll.",
}


def _kept_part() -> str:
    """The hand-written part of the existing page (tuning notes), if any."""
    if not PAGE.exists():
        return KEEP_MARKER + "\n"
    text = PAGE.read_text(encoding="utf-8")
    return text[text.index(KEEP_MARKER):] if KEEP_MARKER in text else KEEP_MARKER + "\n"


def save_results(results: list[FigureResult]) -> list[FigureResult]:
    """Store this run's figures in docs/benchmarks.json (replacing earlier measurements of
    the same figures, so that `--only GROUP` re-measures just those) and return every
    stored figure. Failed groups (number 0) are not stored."""
    stored: dict[str, Any] = {}
    if STORE.exists():
        stored = json.loads(STORE.read_text(encoding="utf-8"))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    for result in results:
        if result.number:
            stored[str(result.number)] = {**asdict(result), "measured": when}
    STORE.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return [_figure(entry) for _, entry in sorted(stored.items(), key=lambda kv: int(kv[0]))]


def _figure(entry: dict[str, Any]) -> FigureResult:
    """A stored figure, with the time it was measured as its first note."""
    rows = [Row(**row) for row in entry["rows"]]
    notes = [f"Measured {entry['measured']}.", *entry["notes"]]
    return FigureResult(entry["number"], entry["title"], rows, entry["data"], notes,
                        entry["plot"])


def write_page(results: list[FigureResult], failed: list[FigureResult], command: str) -> Path:
    """Write docs/benchmarks.md and the plots from the stored figures (and this run's
    failures, if any)."""
    DOCS.mkdir(exist_ok=True)
    for result in results:
        if result.number in PLOTS and result.plot:
            PLOTS[result.number](result)
    rows = [row for result in [*results, *failed] for row in result.rows]
    parts = [
        "# Benchmarks",
        "",
        f"Measured by `{command}` (as root, from the repository root, with "
        "`pip install -e '.[bench]'`; it starts the mini-cluster with "
        "`tests/cluster/start.sh` first and takes about 30 minutes). `--only GROUP,…` "
        "re-measures some figures (groups: tunnel = 1, 2, 7; readiness = 3; walltime = 4; "
        "rpcs = 5, 6; login = 8; queue = 9; idle = 10, simulated, no cluster) and keeps the "
        "others from docs/benchmarks.json; each "
        "section says when it was measured. Every figure compares two things measured in "
        "the same run (a ratio or a difference), never absolute numbers across runs: the "
        "mini-cluster shares two cores with everything else. Traffic stays on 127.0.0.0/8.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in machine().items()],
        "",
        "## Results",
        "",
        markdown_table(rows),
        "",
    ]
    for result in results:
        parts += [f"## {result.number}. {result.title}", "", EXPLAIN.get(result.number, ""), ""]
        parts += [*(f"- {note}" for note in result.notes), ""]
        if result.plot and result.number in PLOTS:
            parts += [f"![{result.title}]({result.plot})", ""]
    parts.append(_kept_part())
    PAGE.write_text("\n".join(parts), encoding="utf-8")
    return PAGE


def print_results(results: list[FigureResult]) -> None:
    """The table on stdout."""
    rows = [row for result in sorted(results, key=lambda r: r.number) for row in result.rows]
    print(table(rows), flush=True)

