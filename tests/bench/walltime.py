"""Figure 4: how long the notebook is unreachable when a job reaches its walltime.

Three scenarios run side by side, each probed every 0.2 s through its local port:
nbtether with handover (3-minute jobs, successor started 75 s before the end), nbtether
without handover (1-minute jobs, resubmitted when one ends), and the tutorial's manual
cycle scripted at its best (1-minute jobs; squeue every 30 s to notice the end, then
sbatch, poll the job's node/port file every second, and a new `ssh -N -L`). For the
handover, SLURM's accounting also tells how much of its walltime the first job (and the
kernel in it) kept.
"""

from __future__ import annotations

import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field

from nbtether.backends import rendezvous
from nbtether.backends import slurm_text as slurm
from nbtether.spec import SessionSpec, parse_session
from tests.bench.common import (
    BenchDaemon,
    FigureResult,
    Row,
    Target,
    answers,
    openssh_argv,
    say,
    session_text,
)
from tests.cluster import Cluster, wait_for
from tests.e2e.harness import free_port

PROBE_EVERY = 0.2
PROBE_TIMEOUT = 1.0  # a probe not answered within a second counts as failed
AFTER = 15.0  # seconds of probing after a scenario has recovered
DEADLINE = 480.0  # the whole figure, bounded
SQUEUE_EVERY = 30.0  # the manual routine's (and batchspawner's) poll interval
FILE_EVERY = 1.0  # the manual routine's look at the job's output file
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING"}
# Under half the walltime: right after the switch the successor is ready, not handing over.
HANDOVER_TIME, HANDOVER_LEAD = "00:03:00", "75s"
KEPT_TARGET = 10.0  # the kernel may lose at most this many seconds of its walltime


@dataclass
class Prober:
    """GET /api/status with the token every PROBE_EVERY s, in a thread."""

    port: int
    token: str = field(repr=False)
    samples: list[tuple[float, bool]] = field(default_factory=list)
    stopped_at: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Begin probing."""
        threading.Thread(target=self._loop, daemon=True).start()

    def stop(self) -> None:
        """End probing (once: a second call changes nothing)."""
        if self.stopped_at is None:
            self._stop.set()
            self.stopped_at = time.monotonic()

    def _loop(self) -> None:
        """Probe on a fixed schedule (a slow probe delays the next one) until stopped."""
        next_at = time.monotonic()
        for _ in range(int(DEADLINE / PROBE_EVERY) + 1):
            if self._stop.is_set():
                return
            started = time.monotonic()
            self.samples.append((started, answers("127.0.0.1", self.port, self.token,
                                                  PROBE_TIMEOUT)))
            next_at += PROBE_EVERY
            self._stop.wait(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic())

    def outages(self) -> list[tuple[float, float]]:
        """(start, end) of each run of failed probes, in monotonic seconds."""
        ends = [t for t, _ in self.samples[1:]] + [self.stopped_at or time.monotonic()]
        spans: list[tuple[float, float]] = []
        for (started, ok), until in zip(self.samples, ends, strict=True):
            if ok:
                continue
            if spans and spans[-1][1] == started:
                spans[-1] = (spans[-1][0], until)
            else:
                spans.append((started, until))
        return spans

    def unreachable(self) -> float:
        """Total seconds covered by failed probes."""
        return sum(end - start for start, end in self.outages())


class ManualCycle:
    """The tutorial's routine as a script that never sleeps on the job: the best a human
    following it could do."""

    def __init__(self, cluster: Cluster, port: int) -> None:
        """A cycle (not started yet) that will serve the notebook on local `port`."""
        self.cluster = cluster
        self.port = port
        self.instance = f"bench{secrets.token_hex(3)}"
        self.session = "manual"
        self.token = secrets.token_hex(24)
        self.jobs: list[str] = []
        self.ready = threading.Event()
        self.noticed_at: float | None = None
        self.recovered_at: float | None = None
        self.error: str | None = None
        self._forwarder: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        parsed = parse_session(self.session, session_text(port, time="00:01:00"))
        assert isinstance(parsed, SessionSpec)
        self.spec = parsed

    def _ssh(self, command: str, stdin: str | None = None) -> str:
        """Run a command on the login node as the user; its stdout."""
        result = subprocess.run(self.cluster.ssh_argv(command), input=stdin, capture_output=True,
                                text=True, timeout=120, check=True)
        return result.stdout

    def submit(self) -> str:
        """sbatch the same batch script nbtether would write (token in a 0600 file)."""
        if not self.jobs:
            self._ssh(rendezvous.prepare_command(self.instance, self.session), stdin=self.token)
        script = slurm.render_script(self.spec, instance=self.instance, session=self.session)
        job_id = slurm.parse_submit(self._ssh(slurm.SUBMIT_COMMAND, stdin=script))
        self.jobs.append(job_id)
        return job_id

    def wait_address(self, job_id: str) -> Target:
        """Look for the job's node/port file every FILE_EVERY s."""
        path = f"{rendezvous.run_dir(self.instance)}/{job_id}-0.ready"

        def read() -> list[str] | None:
            """The file's words (node, address, port), or None before it exists."""
            return self._ssh(f"cat {path} 2>/dev/null || true").split() or None

        node, address, port = wait_for(read, DEADLINE, interval=FILE_EVERY,
                                       message=f"job {job_id} to announce")
        return Target(node, address, int(port), self.token)

    def forward(self, target: Target) -> None:
        """Start `ssh -N -L` to the job (after closing the previous one)."""
        self.close()
        self._forwarder = subprocess.Popen(
            openssh_argv(self.cluster, self.port, target.address, target.port),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: answers("127.0.0.1", self.port, self.token, 2), 30, interval=0.05,
                 message="the manual tunnel")

    def job_ended(self, job_id: str) -> bool:
        """`squeue -j` as the tutorial (and batchspawner) does."""
        state = self._ssh(f"squeue -h -j {job_id} -o %T 2>/dev/null || true").strip()
        return state not in ACTIVE

    def run(self) -> None:
        """One job, its end noticed by polling, one resubmission and a new tunnel."""
        try:
            self.forward(self.wait_address(self.submit()))
            self.ready.set()
            first = self.jobs[0]
            for _ in range(int(DEADLINE / SQUEUE_EVERY)):
                if self._stop.wait(SQUEUE_EVERY) or self.job_ended(first):
                    break
            if self._stop.is_set():
                return
            self.noticed_at = time.monotonic()
            self.close()
            self.forward(self.wait_address(self.submit()))
            self.recovered_at = time.monotonic()
        except (subprocess.SubprocessError, TimeoutError, ValueError) as exc:
            self.error = str(exc)
            self.ready.set()

    def close(self) -> None:
        """Stop the current `ssh -L`."""
        if self._forwarder is not None:
            self._forwarder.terminate()
            self._forwarder.wait(10)
            self._forwarder = None

    def dispose(self) -> None:
        """Stop, close the tunnel, cancel the jobs and remove the remote directory."""
        self._stop.set()
        self.close()
        if self.jobs:
            self.cluster.ssh("scancel " + " ".join(self.jobs), check=False)
        self.cluster.ssh(f"rm -rf ~/{rendezvous.remote_dir(self.instance)}", check=False)


@dataclass
class Scenario:
    """One probed way of living through a walltime end."""

    name: str
    prober: Prober
    first_job: str | None = None
    recovered_at: float | None = None


def daemon_recovered(daemon: BenchDaemon, session: str, scenario: Scenario) -> bool:
    """True once the session is ready again on a job other than its first."""
    record = daemon.record(session) or {}
    if record.get("phase") == "ready" and record.get("job_id") not in (None, scenario.first_job):
        scenario.recovered_at = scenario.recovered_at or time.monotonic()
    return scenario.recovered_at is not None


def probe_session(daemon: BenchDaemon, name: str, port: int) -> Scenario:
    """Start probing a ready session, remembering its first job."""
    scenario = Scenario(name, Prober(port, daemon.token(name)))
    scenario.first_job = str((daemon.record(name) or {}).get("job_id"))
    scenario.prober.start()
    return scenario


def finished(scenarios: list[Scenario]) -> bool:
    """True when every scenario recovered at least AFTER seconds ago."""
    now = time.monotonic()
    return all(s.recovered_at is not None and now - s.recovered_at >= AFTER for s in scenarios)


def run(cluster: Cluster, daemon: BenchDaemon) -> FigureResult:
    """Figure 4: the three scenarios side by side across one walltime end each."""
    manual = ManualCycle(cluster, free_port())
    worker = threading.Thread(target=manual.run, daemon=True)
    worker.start()
    try:
        ports = {"handover": daemon.drop_session("handover", time=HANDOVER_TIME,
                                                 handover=HANDOVER_LEAD),
                 "no-handover": daemon.drop_session("no-handover", time="00:01:00")}
        daemon.wait_ready(list(ports), timeout=300)
        with_handover = probe_session(daemon, "handover", ports["handover"])
        without = probe_session(daemon, "no-handover", ports["no-handover"])
        if not manual.ready.wait(300) or manual.error:
            raise RuntimeError(f"manual cycle did not start: {manual.error}")
        by_hand = Scenario("manual", Prober(manual.port, manual.token), first_job=manual.jobs[0])
        by_hand.prober.start()
        say("figure 4: all three scenarios serve; waiting for their walltime ends")
        scenarios = [with_handover, without, by_hand]

        def done() -> bool:
            """Update each scenario's recovery and stop probing it AFTER s later, so that
            each is measured across one walltime end (the 1-min jobs would meet a second
            one while the 3-min job waits for its own); True when all have recovered."""
            daemon_recovered(daemon, "handover", with_handover)
            daemon_recovered(daemon, "no-handover", without)
            by_hand.recovered_at = manual.recovered_at
            if manual.error:
                raise RuntimeError(f"manual cycle failed: {manual.error}")
            now = time.monotonic()
            for scenario in scenarios:
                if scenario.recovered_at is not None and now - scenario.recovered_at >= AFTER:
                    scenario.prober.stop()
            return finished(scenarios)

        wait_for(done, DEADLINE, interval=0.5, message="every scenario to recover")
        for scenario in scenarios:
            scenario.prober.stop()
        result = summarize(scenarios, manual)
        result.rows.append(kernel_kept(cluster, str(with_handover.first_job)))
        return result
    finally:
        manual.dispose()


def summarize(scenarios: list[Scenario], manual: ManualCycle) -> FigureResult:
    """Rows and plot data from the probers."""
    targets = {"handover": ("0", lambda s: s == 0.0),
               "no-handover": ("≤ 5", lambda s: s <= 5.0),
               "manual": ("", None)}
    result = FigureResult(4, "Unreachable time across a walltime end", plot="bench-walltime.png")
    seconds = {}
    for scenario in scenarios:
        lost = scenario.prober.unreachable()
        seconds[scenario.name] = lost
        start = scenario.prober.samples[0][0]
        result.data[scenario.name] = {
            "unreachable": lost,
            "outages": [(a - start, b - start) for a, b in scenario.prober.outages()],
            "probed_for": (scenario.prober.stopped_at or start) - start,
            "probes": len(scenario.prober.samples),
        }
        text, check = targets[scenario.name]
        result.rows.append(Row(
            "4 walltime", f"unreachable s, {scenario.name}", f"{lost:.1f}", text,
            check(lost) if check else None,
            f"{len(scenario.prober.outages())} outage(s) in "
            f"{len(scenario.prober.samples)} probes"))
    result.rows += manual_rows(scenarios[-1], manual, seconds["no-handover"])
    return result


def kernel_kept(cluster: Cluster, job_id: str) -> Row:
    """How much of its walltime the handed-over job ran (its kernel with it), from sacct."""

    def accounted() -> tuple[int, int] | None:
        out = cluster.ssh(f"sacct -X -n -P -j {job_id} -o ElapsedRaw,TimelimitRaw,End").stdout
        fields = out.strip().split("|")
        if len(fields) != 3 or fields[2] in ("", "Unknown"):
            return None
        return int(fields[0]), int(fields[1]) * 60

    elapsed, limit = wait_for(accounted, 60, interval=1, message=f"accounting of job {job_id}")
    lost = limit - elapsed
    return Row("4 walltime", "s of the walltime the kernel lost, handover", str(lost),
               f"≤ {KEPT_TARGET:g}", lost <= KEPT_TARGET,
               f"kept {elapsed} of {limit} s ({100 * elapsed / limit:.1f} %)")


def manual_rows(scenario: Scenario, manual: ManualCycle, automatic: float) -> list[Row]:
    """The manual cycle split into noticing the end (luck of the 30 s poll's phase) and
    restoring; and what it takes on average, with the poll's phase uniformly random."""
    outages = scenario.prober.outages()
    if not outages or manual.noticed_at is None or manual.recovered_at is None:
        return []
    noticed = manual.noticed_at - outages[0][0]
    restore = manual.recovered_at - manual.noticed_at
    average = SQUEUE_EVERY / 2 + restore
    return [
        Row("4 walltime", "manual: s from the end to noticing it", f"{noticed:.1f}", "", None,
            f"squeue -j every {SQUEUE_EVERY:g} s: 0 to {SQUEUE_EVERY:g} s by luck"),
        Row("4 walltime", "manual: s from noticing to reachable", f"{restore:.1f}", "", None,
            "sbatch, queue, Jupyter start, node/port file, ssh -L"),
        Row("4 walltime", "manual on average minus no-handover, s", f"{average - automatic:.1f}",
            "", None, f"average manual = {SQUEUE_EVERY / 2:g} s + restore = {average:.1f} s"),
    ]
