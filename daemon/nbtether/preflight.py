"""`nbtether check`: preflight sessions against their clusters without submitting anything.

Per session: SSH login and host key, the partition (SLURM) or queue (Grid Engine), the
scheduler's own verdict on the very script a job would get (`sbatch --test-only`,
`qsub -w v`), and Jupyter in the declared environment (module loads, conda, venv, in a
login shell like the job's). `install=True` creates the declared venv and
installs jupyterlab there. Every value from a session file reaches the cluster's shell
quoted (and the spec model already restricts it to a safe alphabet).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncssh

from nbtether.backends import rendezvous, sge_text, slurm_text
from nbtether.config import ClusterConfig, Settings
from nbtether.errors import (
    AuthError,
    ClusterUnreachable,
    ConfigError,
    HostKeyError,
    NbtetherError,
)
from nbtether.install import jupyter_hint
from nbtether.remote import CONNECT_TIMEOUT, SshLink
from nbtether.spec import SessionSpec, format_walltime

LOGIN_TIMEOUT = CONNECT_TIMEOUT + 10.0
COMMAND_TIMEOUT = 120.0
SBATCH_TIMEOUT = 180.0  # sbatch retries a busy controller by itself for about two minutes
INSTALL_TIMEOUT = 1800.0  # pip install jupyterlab on a slow shared filesystem
LOCAL_INSTANCE = "check"  # job name part when this machine has no daemon instance yet

# Exit codes of the environment probe (ENV_*), chosen clear of bash's own (126, 127, 128+n).
ENV_MODULE, ENV_CONDA, ENV_VENV, ENV_JUPYTER = 91, 92, 93, 94

Status = Literal["ok", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    """One preflight check: its outcome, what was seen, and how to fix a failure."""

    name: str
    status: Status
    detail: str
    hint: str = ""
    installable: bool = False  # `--install` can fix this failure


@dataclass
class Report:
    """All checks of one session."""

    session: str
    cluster: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return all(check.status != "fail" for check in self.checks)


async def check_sessions(
    config: Settings, specs: Mapping[str, SessionSpec], *, install: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Report]:
    """Preflight each session, one connection per cluster; reports in the order of `specs`.

    `progress` gets each line of a cluster-side install as it is printed.
    """
    by_cluster: dict[str, list[str]] = {}
    for name, spec in specs.items():
        by_cluster.setdefault(spec.cluster, []).append(name)
    reports: dict[str, Report] = {}
    instance = _instance(config)
    for cluster, names in by_cluster.items():
        settings = config.clusters[cluster]
        if settings.kind == "local":
            for name in names:
                reports[name] = Report(name, cluster, await _local_checks(specs[name], install))
            continue
        link, login = await _login(cluster, settings)
        try:
            for name in names:
                checks = [login]
                if login.status == "ok":
                    checks += await _remote_checks(link, name, specs[name], instance, install,
                                                   settings, progress)
                else:
                    checks += [Check(n, "skip", "not checked: no login")
                               for n in (*_SCHEDULER_CHECKS[settings.kind], "environment")]
                reports[name] = Report(name, cluster, checks)
        finally:
            await link.stop()
    return [reports[name] for name in specs]


def _instance(config: Settings) -> str:
    """The daemon's instance id if it has one; never creates the state directory."""
    try:
        return (config.state_dir / "instance").read_text().strip() or LOCAL_INSTANCE
    except OSError:
        return LOCAL_INSTANCE


# --- login ---------------------------------------------------------------------------------


async def _login(name: str, config: ClusterConfig) -> tuple[SshLink, Check]:
    """One connection attempt, verifying the host key; the link is left open when it worked."""
    changed = asyncio.Event()

    async def on_up(conn: asyncssh.SSHClientConnection) -> None:
        changed.set()

    link = SshLink(name, config, on_up, changed.set)
    link.start()
    with contextlib.suppress(TimeoutError):  # until the first attempt's outcome
        await asyncio.wait_for(changed.wait(), LOGIN_TIMEOUT)
    where = _where(config)
    if link.connected:
        return link, Check("login", "ok", f"logged in to {where}; host key verified")
    error = link.error or ClusterUnreachable("timed out")
    return link, Check("login", "fail", str(error), _login_hint(error, config))


def _where(config: ClusterConfig) -> str:
    user = f"{config.user}@" if config.user else ""
    port = f":{config.port}" if config.port else ""
    return f"{user}{config.host}{port}"


def _login_hint(error: NbtetherError, config: ClusterConfig) -> str:
    host = config.host or "?"
    port = config.port or 22
    known_hosts = str(config.known_hosts) if config.known_hosts else "~/.ssh/known_hosts"
    if isinstance(error, HostKeyError) and error.host not in ("", host):
        return (
            f"verify the jump host {error.host}'s key fingerprint against your site's "
            f"documentation, then put the verified key into {known_hosts}: jump hosts are "
            "checked against the cluster's known_hosts too"
        )
    if isinstance(error, HostKeyError):
        entry = f"[{host}]:{port}" if port != 22 else host
        return (
            f"verify the login node's host key fingerprint against your site's documentation "
            f"(ssh-keyscan -p {port} {host} | ssh-keygen -lf -), then put the verified key "
            f"for {entry} into {known_hosts}; never accept a changed key unchecked"
        )
    if isinstance(error, AuthError):
        return (
            "check `user` and `identity_file` in the config: `ssh` with the same key must log "
            "in without a password (under a service, an ssh-agent needs `agent_path`)"
        )
    if isinstance(error, ConfigError):
        return "fix the cluster's settings in config.yaml"
    return "check `host`, `port` and `proxy_jump` in the config, and the network (VPN?)"


# --- on the cluster ------------------------------------------------------------------------


_SCHEDULER_CHECKS = {"slurm": ("partition", "sbatch --test-only"),
                     "sge": ("queue", "qsub -w v")}


async def _remote_checks(
    link: SshLink, name: str, spec: SessionSpec, instance: str, install: bool,
    cluster: ClusterConfig,
    progress: Callable[[str], None],
) -> list[Check]:
    if cluster.kind == "sge":
        checks = [
            await _guarded("queue", _queue(link, spec)),
            await _guarded("qsub -w v", _verify(link, name, spec, instance, cluster)),
        ]
    else:
        checks = [
            await _guarded("partition", _partition(link, spec)),
            await _guarded("sbatch --test-only", _test_only(link, name, spec, instance)),
        ]
    environment = await _guarded("environment", _environment(link, name, spec))
    if install and environment.status == "ok":
        checks.append(Check("install", "ok", "nothing to do: Jupyter is already there"))
    elif install and environment.status == "fail":
        installed = await _guarded("install", _install(link, spec, environment, progress))
        checks.append(installed)
        if installed.status == "ok":
            environment = await _guarded("environment", _environment(link, name, spec))
    checks.append(environment)
    return checks


async def _guarded(name: str, work: Coroutine[Any, Any, Check]) -> Check:
    """A check whose connection broke fails with the reason instead of ending the command."""
    try:
        return await work
    except ClusterUnreachable as exc:
        return Check(name, "fail", str(exc), "the connection to the login node failed mid-way")


async def _run(
    link: SshLink, command: str, *, stdin: str | None = None, timeout: float = COMMAND_TIMEOUT
) -> tuple[int, str, str]:
    result = await link.run(command, stdin=stdin, timeout=timeout)
    return result.exit_status or 0, _text(result.stdout), _text(result.stderr)


async def _partition(link: SshLink, spec: SessionSpec) -> Check:
    """sinfo knows the partition, it is up, and its time limit admits the walltime."""
    partition = spec.resources.partition
    selector = f"-p {shlex.quote(partition)} " if partition else ""
    code, out, err = await _run(link, f"sinfo -h {selector}-o '%P %a %l'")
    if code != 0:
        return Check("partition", "fail", _words(err), "sinfo failed: is SLURM up?")
    rows = [row for row in (line.split() for line in out.splitlines()) if len(row) == 3]
    if partition is None:
        default = next((row for row in rows if row[0].endswith("*")), None)
        if default is None:
            return Check("partition", "fail", "none declared and the cluster has no default",
                         f"set resources.partition to one of: {_listing(out)}")
        found, detail = default, f"none declared: the default partition {default[0][:-1]}"
    else:
        match = next((row for row in rows if row[0].rstrip("*") == partition), None)
        if match is None:
            show = f"scontrol show partition {shlex.quote(partition)}"
            _, said, said_err = await _run(link, show)
            _, known, _ = await _run(link, "sinfo -h -o %P")
            words = _words(said_err or said) or f"sinfo does not list partition {partition}"
            return Check("partition", "fail", words,
                         f"set resources.partition to one of: {_listing(known)}")
        found, detail = match, partition
    _, state, limit = found
    if state != "up":
        return Check("partition", "fail", f"{detail} is {state}",
                     "jobs wait until the partition is up again; ask your admins, or pick "
                     "another partition")
    longest = slurm_text.parse_time_left(limit)
    if longest is not None and spec.resources.time > longest:
        return Check("partition", "fail",
                     f"{detail}: walltime {format_walltime(spec.resources.time)} exceeds the "
                     f"partition's limit {limit}",
                     "the job would never start (PartitionTimeLimit): shorten resources.time "
                     "or pick another partition")
    return Check("partition", "ok", f"{detail} ({state}, time limit {limit})")


def _listing(sinfo_partitions: str) -> str:
    names = [p.rstrip("*") for p in sinfo_partitions.split()]
    return ", ".join(names) or "(sinfo lists none)"


_TEST_ONLY = re.compile(r"Job \d+ to start at (?P<when>\S+)(?P<rest>.*)")
_SBATCH_HINTS = (
    ("partition", "fix resources.partition (see `sinfo -s`)"),
    ("account", "fix resources.account (see `sacctmgr show assoc user=$USER`)"),
    ("qos", "fix resources.qos (see `sacctmgr show assoc user=$USER format=qos`)"),
    ("reservation", "fix resources.reservation (see `scontrol show reservation`)"),
    ("time limit", "shorten resources.time to what the partition allows (see `sinfo -s`)"),
    ("memory", "lower resources.mem, or pick a partition with bigger nodes"),
    ("gres", "fix resources.gpus, or pick a partition with GPUs"),
    ("feature", "fix resources.constraint (see `sinfo -o '%P %f'`)"),
)


async def _test_only(link: SshLink, name: str, spec: SessionSpec, instance: str) -> Check:
    """sbatch --test-only with the job's own script on stdin: SLURM validates, submits nothing."""
    script = slurm_text.render_script(spec, instance=instance, session=name)
    code, _, err = await _run(link, "sbatch --test-only", stdin=script, timeout=SBATCH_TIMEOUT)
    if code != 0:
        message = slurm_text.submit_error(err)
        lowered = message.lower()
        hint = next((h for key, h in _SBATCH_HINTS if key in lowered),
                    "fix the session's resources; SLURM's message says which")
        return Check("sbatch --test-only", "fail", message, hint)
    match = _TEST_ONLY.search(err)
    if match is None:
        return Check("sbatch --test-only", "ok", _words(err) or "accepted")
    return Check("sbatch --test-only", "ok", f"would start at {match['when']}{match['rest']}")


async def _queue(link: SshLink, spec: SessionSpec) -> Check:
    """Grid Engine knows the queue, and its h_rt admits the walltime."""
    queue = spec.resources.partition
    if queue is None:
        return Check("queue", "ok", "none declared: Grid Engine picks a queue that fits")
    code, out, err = await _run(link, f"qconf -sq {shlex.quote(queue)}")
    if code != 0:
        _, known, _ = await _run(link, "qconf -sql")
        names = ", ".join(known.split()) or "(qconf lists none)"
        return Check("queue", "fail", _words(err or out) or f"no queue {queue}",
                     f"set resources.partition to one of: {names}")
    limit = next((line.split()[1] for line in out.splitlines()
                  if line.startswith("h_rt ") and len(line.split()) == 2), "INFINITY")
    longest = sge_text.parse_duration(limit)
    if longest is not None and spec.resources.time > longest:
        return Check("queue", "fail",
                     f"{queue}: walltime {format_walltime(spec.resources.time)} exceeds the "
                     f"queue's h_rt {limit}",
                     "the job would never start: shorten resources.time or pick another queue")
    return Check("queue", "ok", f"{queue} (h_rt {limit})")


async def _verify(
    link: SshLink, name: str, spec: SessionSpec, instance: str, cluster: ClusterConfig
) -> Check:
    """qsub -w v with the job's own script: Grid Engine says whether a queue fits, submits
    nothing."""
    script = sge_text.render_script(spec, instance=instance, session=name, cluster=cluster)
    code, out, err = await _run(link, "qsub -w v", stdin=script, timeout=SBATCH_TIMEOUT)
    said = _words(out + err)
    if code != 0 or "no suitable queue" in said:
        return Check("qsub -w v", "fail", sge_text.submit_error(out + err),
                     "fix the session's resources, or the cluster's parallel_environment, "
                     "memory_resource and gpu_resource in the config")
    return Check("qsub -w v", "ok", said or "accepted")


def _activation(spec: SessionSpec, *, venv: bool = True) -> list[str]:
    """The job script's module loads and activations, each verified (Lmod exits 0 on errors)."""
    env = spec.environment
    lines = []
    for module in env.modules:
        word = shlex.quote(module)
        lines += [
            f"module load {word}",
            f'case ":${{LOADEDMODULES:-}}:" in *:{word}*) ;; '
            f"*) echo module {word}; exit {ENV_MODULE} ;; esac",
        ]
    if env.conda:
        lines.append(f"conda activate {rendezvous.shell_path(env.conda)} || exit {ENV_CONDA}")
    if env.venv and venv:
        activate = f"{rendezvous.shell_path(env.venv)}/bin/activate"
        lines += [f"[ -f {activate} ] || exit {ENV_VENV}", f"source {activate}"]
    return lines


async def _environment(link: SshLink, name: str, spec: SessionSpec) -> Check:
    """Jupyter's app in a login shell after the job's module loads and activations."""
    command = f"jupyter-{spec.jupyter.app}"
    probe = [*_activation(spec),
             f"where=$(command -v {command}) || exit {ENV_JUPYTER}",
             'echo "found $where"', f"{command} --version"]
    code, out, err = await _run(link, f"bash -lc {shlex.quote(chr(10).join(probe))}")
    env = spec.environment
    install = f"create it with `nbtether check {name} --install`, or by hand: "
    if code == ENV_MODULE:
        failed = out.strip().splitlines()[-1].removeprefix("module ") if out.strip() else "?"
        return Check("environment", "fail", f"module {failed} did not load: {_words(err, lines=2)}",
                     "check the name with `module spider` on the login node")
    if code == ENV_CONDA:
        return Check("environment", "fail", f"conda activate {env.conda} failed: {_words(err)}",
                     "initialise conda for bash login shells (`conda init bash`) or load its "
                     "module first, and check the environment's name")
    if code == ENV_VENV:
        return Check("environment", "fail", f"no venv at {env.venv} ({env.venv}/bin/activate "
                     "does not exist)", install + _venv_commands(spec), installable=True)
    if code == ENV_JUPYTER:
        where = f"venv {env.venv}" if env.venv else (
            f"conda env {env.conda}" if env.conda else "the login environment")
        hint = (f"install it: `nbtether check {name} --install`, or `{env.venv}/bin/pip install "
                "jupyterlab`" if env.venv else f"install jupyterlab into {where}")
        return Check("environment", "fail", f"{command} not found in {where}", hint,
                     installable=True)
    found = next((line[6:] for line in out.splitlines() if line.startswith("found ")), command)
    version = out.strip().splitlines()[-1] if out.strip() else ""
    if code != 0 or not re.match(r"\d+\.\d+", version):
        return Check("environment", "fail", f"{command} --version failed: {_words(err)}",
                     f"repair the installation: reinstall jupyterlab into {found}'s environment")
    return Check("environment", "ok", f"jupyter {spec.jupyter.app} {version} at {found}")


def _venv_commands(spec: SessionSpec) -> str:
    env = spec.environment
    modules = "".join(f"module load {shlex.quote(m)} && " for m in env.modules)
    return f"{modules}python3 -m venv {env.venv} && {env.venv}/bin/pip install jupyterlab"


async def _install(
    link: SshLink, spec: SessionSpec, failed: Check, progress: Callable[[str], None]
) -> Check:
    """Create the declared venv (with the declared modules loaded) and install jupyterlab,
    showing pip's progress as it goes."""
    env = spec.environment
    if not env.venv:
        flag = "-p" if "/" in (env.conda or "") else "-n"
        what = (f"`conda install {flag} {env.conda} jupyterlab`" if env.conda
                else "declare environment.venv (e.g. ~/jupyter_env) and run --install again")
        return Check("install", "skip", "no environment.venv declared: nothing to create",
                     f"install jupyterlab yourself: {what}")
    if not failed.installable:
        return Check("install", "skip", "--install cannot fix this: see the environment check")
    venv = rendezvous.shell_path(env.venv)
    steps = _activation(spec, venv=False)
    steps += [f"python3 -m venv {venv}",
              f"{venv}/bin/python -m pip install --progress-bar off "
              "--disable-pip-version-check jupyterlab"]
    script = " && ".join(f"{{ {step}; }}" for step in steps)
    said: list[str] = []

    def show(line: str) -> None:
        said.append(line)
        progress(line)

    code = await link.run_lines(f"bash -lc {shlex.quote(script)}", show, INSTALL_TIMEOUT)
    if code != 0:
        output = "\n".join(said)
        return Check("install", "fail", f"installing jupyterlab into {env.venv} failed: "
                     f"{_words(output, lines=-6)}",
                     "read the error; the venv may need removing")
    return Check("install", "ok", f"created {env.venv} and installed jupyterlab")


# --- this machine --------------------------------------------------------------------------


async def _local_checks(spec: SessionSpec, install: bool) -> list[Check]:
    """A local session needs Jupyter in the Python that runs nbtether."""
    app = spec.jupyter.app
    argv = [sys.executable, "-m", "jupyter", app, "--version"]
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        code, version, said = -1, "", str(exc)
    else:
        code, version, said = process.returncode or 0, out.decode().strip(), err.decode()
    hint = jupyter_hint()
    if code == 0 and re.match(r"\d+\.\d+", version):
        return [Check("jupyter", "ok", f"jupyter {app} {version} ({sys.executable})")]
    checks = [Check("jupyter", "fail", f"`python -m jupyter {app} --version` failed: "
                    f"{_words(said)}", hint)]
    if install:
        checks.append(Check("install", "skip", "nbtether does not install into its own Python",
                            hint))
    return checks


def _words(text: str, lines: int = 3) -> str:
    """The first (or, for negative `lines`, last) non-empty lines of a message, on one line."""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(kept[:lines] if lines > 0 else kept[lines:])


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""
