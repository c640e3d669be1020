"""Figures 1, 2 and 7: the daemon's tunnel against OpenSSH's `ssh -N -L` to the same notebook.

One session serves a notebook; an `ssh -N -L` through the same login node forwards a second
local port to the same node and Jupyter port. Every comparison alternates the tunnels so
that all see the same machine state. Figure 2 also measures a second session of the same
daemon on a cluster entry with `use_openssh: false`, whose bytes the daemon copies itself.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tests.bench.common import (
    BenchDaemon,
    FigureResult,
    Row,
    Target,
    answers,
    median,
    openssh_forward,
    percentile,
    say,
)
from tests.cluster import Cluster, wait_for
from tests.e2e.harness import login_keys

BIG_FILE = "nbtether-bench-300M.bin"
BIG_SIZE = 300 * 1024 * 1024  # `head -c 300M` writes MiB
THROUGHPUT_RUNS = 7  # per tunnel, alternating
LATENCY_REQUESTS = 200  # per tunnel and mode
LATENCY_BLOCKS = 10  # the 200 are taken in alternating blocks of 20
LATENCY_WARMUP = 10
PARALLEL_REQUESTS = 200
ABORTS = 50
ABORT_CONCURRENCY = 5
ABORT_AFTER_BYTES = 1024 * 1024
CHANNEL_SETTLE = 15.0  # seconds the SSH channels get to close after the aborts
SESSION = "transfer"
IN_DAEMON = "in-daemon"  # the session and cluster entry whose bytes the daemon copies
IN_DAEMON_LABEL = "nbtether, use_openssh: false"


def in_daemon_cluster(cluster: Cluster) -> str:
    """Config text for a second entry of the testbed cluster with `use_openssh: false`."""
    keys = login_keys(cluster, "use_openssh: false\n")
    return f"  {IN_DAEMON}:\n" + "".join(f"    {line}\n" for line in keys.splitlines())


@contextlib.contextmanager
def big_file(cluster: Cluster) -> Iterator[str]:
    """A 300 MiB random file in hpcuser's home (Jupyter's root), removed afterwards."""
    cluster.ssh(f"head -c 300M /dev/urandom > ~/{BIG_FILE}", timeout=300)
    try:
        yield BIG_FILE
    finally:
        cluster.ssh(f"rm -f ~/{BIG_FILE}", check=False)


def file_request(name: str, token: str) -> bytes:
    """GET /files/<name>?token=… as a browser's download would send it."""
    return (f"GET /files/{name}?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Connection: close\r\n\r\n").encode()


@dataclass(frozen=True)
class Download:
    """One timed download."""

    seconds: float  # request sent → connection closed after the last byte
    body_seconds: float  # first response byte → last byte (Jupyter prepares the file first)
    nbytes: int


def download(port: int, name: str, token: str, timeout: float = 300.0) -> Download:
    """Download a file through a local port, reading until the server closes."""
    buffer = bytearray(1024 * 1024)
    view = memoryview(buffer)
    received = 0
    first: float | None = None
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        started = time.perf_counter()
        sock.sendall(file_request(name, token))
        while count := sock.recv_into(view):
            if first is None:
                first = time.perf_counter()
                if not bytes(view[:12]).startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"download failed: {bytes(view[:12])!r}")
            received += count
            if received > 2 * BIG_SIZE:
                raise RuntimeError("the download does not end")
        ended = time.perf_counter()
    if received < BIG_SIZE or first is None:
        raise RuntimeError(f"download ended after {received} bytes")
    return Download(ended - started, ended - first, received)


def mb_per_s(result: Download) -> float:
    """Throughput in MB/s (10^6 bytes) over the whole request."""
    return BIG_SIZE / result.seconds / 1e6


def throughput(ports: dict[str, int], token: str) -> FigureResult:
    """Figure 1: 300 MiB downloads through each tunnel, alternated; ratio of median MB/s."""
    say("figure 1: throughput, warming up")
    for port in ports.values():
        download(port, BIG_FILE, token)
    runs: dict[str, list[Download]] = {name: [] for name in ports}
    order = list(ports)
    for run in range(THROUGHPUT_RUNS):
        for name in order if run % 2 == 0 else reversed(order):
            runs[name].append(download(ports[name], BIG_FILE, token))
            say(f"  {name} run {run + 1}: {mb_per_s(runs[name][-1]):.0f} MB/s")
    total = {name: [mb_per_s(r) for r in results] for name, results in runs.items()}
    body = {name: [BIG_SIZE / r.body_seconds / 1e6 for r in results]
            for name, results in runs.items()}
    ratio = median(total["nbtether"]) / median(total["OpenSSH"])
    body_ratio = median(body["nbtether"]) / median(body["OpenSSH"])
    result = FigureResult(1, "Throughput of a 300 MiB download", plot="bench-throughput.png",
                          data={"total_mb_s": total, "body_mb_s": body, "ratio": ratio,
                                "body_ratio": body_ratio})
    result.rows.append(Row(
        "1 throughput", "median MB/s, nbtether ÷ OpenSSH", f"{ratio:.2f}", "≥ 1.0", ratio >= 1.0,
        f"{median(total['nbtether']):.0f} vs {median(total['OpenSSH']):.0f} MB/s, "
        f"{THROUGHPUT_RUNS} runs each"))
    result.rows.append(Row(
        "1 throughput", "same, body only (after Jupyter's first byte)", f"{body_ratio:.2f}", "",
        None, f"{median(body['nbtether']):.0f} vs {median(body['OpenSSH']):.0f} MB/s"))
    return result


def keepalive_latencies(port: int, token: str, count: int) -> list[float]:
    """Seconds per GET /api/status, all on one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"token {token}"}
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            connection.request("GET", "/api/status", headers=headers)
            response = connection.getresponse()
            response.read()
            times.append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"/api/status answered {response.status}")
    finally:
        connection.close()
    return times


def fresh_latencies(port: int, token: str, count: int) -> list[float]:
    """Seconds per GET /api/status, each on a new connection (connect included)."""
    headers = {"Authorization": f"token {token}", "Connection": "close"}
    times = []
    for _ in range(count):
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("GET", "/api/status", headers=headers)
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        times.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"/api/status answered {response.status}")
    return times


Measure = Callable[[int, str, int], list[float]]


def alternate(measure: Measure, ports: dict[str, int],
              tokens: dict[str, str]) -> dict[str, list[float]]:
    """LATENCY_REQUESTS samples per tunnel, taken in alternating blocks after a warm-up."""
    for name, port in ports.items():
        measure(port, tokens[name], LATENCY_WARMUP)
    block = LATENCY_REQUESTS // LATENCY_BLOCKS
    samples: dict[str, list[float]] = {name: [] for name in ports}
    for index in range(LATENCY_BLOCKS):
        names = list(ports) if index % 2 == 0 else list(reversed(ports))
        for name in names:
            samples[name] += measure(ports[name], tokens[name], block)
    return samples


def latency(ports: dict[str, int], tokens: dict[str, str]) -> FigureResult:
    """Figure 2: p50/p99 of 200 small requests per tunnel, keep-alive and new connections."""
    say("figure 2: latency")
    modes = {"keep-alive": keepalive_latencies, "new connection": fresh_latencies}
    result = FigureResult(2, "Latency of small requests", plot="bench-latency.png")
    for mode, measure in modes.items():
        samples = alternate(measure, ports, tokens)
        result.data[mode] = samples
        theirs = samples["OpenSSH"]
        for name, label, target in (("nbtether", mode, "≤ 1.1"),
                                    (IN_DAEMON_LABEL, f"{mode}, use_openssh: false", "")):
            ours = samples[name]
            p50 = percentile(ours, 50) / percentile(theirs, 50)
            p99 = percentile(ours, 99) / percentile(theirs, 99)
            result.rows.append(Row(
                "2 latency", f"p50 ratio, {label}", f"{p50:.2f}", target,
                p50 <= 1.1 if target else None,
                f"p50 {percentile(ours, 50) * 1e3:.2f} vs {percentile(theirs, 50) * 1e3:.2f} ms"))
            result.rows.append(Row(
                "2 latency", f"p99 ratio, {label}", f"{p99:.2f}", "", None,
                f"p99 {percentile(ours, 99) * 1e3:.2f} vs {percentile(theirs, 99) * 1e3:.2f} ms"))
    return result


def sshd_channels(jupyter_port: int) -> int:
    """TCP connections from sshd processes to the notebook's port (one per open channel)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( dport = :{jupyter_port} )"],
        capture_output=True, text=True, check=True,
    ).stdout
    return sum(1 for line in out.splitlines() if '"sshd"' in line)


def parallel_errors(port: int, token: str) -> tuple[int, float]:
    """200 simultaneous GET /api/status on new connections: (failures, seconds for all)."""
    barrier = threading.Barrier(PARALLEL_REQUESTS)

    def one(_: int) -> bool:
        """One request, started together with all the others."""
        barrier.wait(timeout=60)
        return answers("127.0.0.1", port, token, timeout=60)

    started = time.monotonic()
    with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
        results = list(pool.map(one, range(PARALLEL_REQUESTS)))
    return results.count(False), time.monotonic() - started


def abort_download(port: int, token: str) -> bool:
    """Start downloading the big file, read 1 MiB, then drop the socket as a browser does
    when the user cancels; True if the download had started properly."""
    buffer = bytearray(64 * 1024)
    received = 0
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(file_request(BIG_FILE, token))
        head = b""
        while received < ABORT_AFTER_BYTES:
            count = sock.recv_into(buffer)
            if count == 0:
                return False
            if not head:
                head = bytes(buffer[:12])
            received += count
    return head.startswith(b"HTTP/1.1 200")


def abort_errors(port: int, token: str) -> int:
    """ABORTS aborted downloads, ABORT_CONCURRENCY at a time; how many went wrong."""

    def one(_: int) -> bool:
        """One aborted download; an OSError counts as an error."""
        try:
            return abort_download(port, token)
        except OSError:
            return False

    with ThreadPoolExecutor(ABORT_CONCURRENCY) as pool:
        return list(pool.map(one, range(ABORTS))).count(False)


def channels_back(jupyter_port: int, baseline: int) -> tuple[float | None, list[int]]:
    """Seconds until the sshd→notebook connections are back to `baseline` (None: never
    within CHANNEL_SETTLE), and the counts seen every 0.25 s."""
    seen = []
    started = time.monotonic()
    while time.monotonic() - started < CHANNEL_SETTLE:
        seen.append(sshd_channels(jupyter_port))
        if seen[-1] <= baseline:
            return time.monotonic() - started, seen
        time.sleep(0.25)
    return None, seen


def concurrency(port: int, target: Target) -> FigureResult:
    """Figure 7: 200 parallel requests and 50 aborted downloads through the daemon: errors,
    and whether every SSH channel to the notebook is closed again afterwards."""
    say("figure 7: concurrency and aborts")
    baseline = sshd_channels(target.port)
    failed, seconds = parallel_errors(port, target.token)
    aborted = abort_errors(port, target.token)
    back_after, counts = channels_back(target.port, baseline)
    still_serves = answers("127.0.0.1", port, target.token, timeout=10)
    result = FigureResult(7, "Concurrency and aborted downloads", data={
        "baseline": baseline, "counts": counts, "parallel_seconds": seconds})
    result.rows.append(Row("7 concurrency", f"errors in {PARALLEL_REQUESTS} parallel requests",
                           str(failed), "0", failed == 0, f"all answered in {seconds:.1f} s"))
    result.rows.append(Row("7 concurrency", f"errors in {ABORTS} aborted downloads",
                           str(aborted), "0", aborted == 0 and still_serves,
                           "tunnel still serves afterwards" if still_serves
                           else "tunnel no longer serves"))
    result.rows.append(Row(
        "7 concurrency", "sshd→notebook connections back to baseline after",
        "never" if back_after is None else f"{back_after:.2f} s", f"≤ {CHANNEL_SETTLE:.0f} s",
        back_after is not None, f"baseline {baseline}, first count {counts[0]}"))
    return result


def run(cluster: Cluster, daemon: BenchDaemon) -> list[FigureResult]:
    """Figures 1, 2 and 7 on one session of a running daemon (figure 2 with a second)."""
    port = daemon.drop_session(SESSION, time="00:30:00", mem="1G")
    in_daemon_port = daemon.drop_session(IN_DAEMON, time="00:30:00", cluster=IN_DAEMON)
    with big_file(cluster):
        daemon.wait_ready([SESSION, IN_DAEMON], timeout=300)
        target = wait_for(lambda: daemon.target(SESSION), 30, message="the endpoint")
        in_daemon = wait_for(lambda: daemon.target(IN_DAEMON), 30, message="the endpoint")
        with openssh_forward(cluster, target) as ssh_port:
            ports = {"nbtether": port, "OpenSSH": ssh_port}
            results = [throughput(ports, target.token)]
            ports[IN_DAEMON_LABEL] = in_daemon_port
            tokens = {"nbtether": target.token, "OpenSSH": target.token,
                      IN_DAEMON_LABEL: in_daemon.token}
            results.append(latency(ports, tokens))
        results.append(concurrency(port, target))
    daemon.remove(SESSION)
    daemon.remove(IN_DAEMON)
    return results
