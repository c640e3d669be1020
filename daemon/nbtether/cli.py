"""The `nbtether` command line."""

from __future__ import annotations

import asyncio
import getpass
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from nbtether import __version__, service
from nbtether.backends.kinds import refusal
from nbtether.config import Settings, load_settings
from nbtether.errors import AlreadyRunning, ConfigError, DemoUnavailable
from nbtether.spec import (
    InvalidSpec,
    SessionSpec,
    Spec,
    check_files,
    ignored_files,
    load_sessions,
    not_a_session,
    session_files,
)
from nbtether.state import Record, StateStore
from nbtether.trust import Untrusted, check_directory

if TYPE_CHECKING:
    from nbtether.control import Challenge

EXIT_INVALID = 1  # invalid file, failed check or login, unknown/unready session, daemon running
EXIT_CONFIG = 3  # the daemon config is unusable
EXIT_NO_DAEMON = 4  # no daemon holds the state directory: no session is reachable
WAIT_TIMEOUT = 600.0
# Terminal control characters in a server's prompt are shown escaped, never obeyed.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

app = typer.Typer(
    help="Keep Jupyter notebooks running as SLURM jobs, reachable at one local URL.",
    no_args_is_help=True,
    add_completion=True,
)
out = Console(soft_wrap=True)  # messages name paths: never break them
err = Console(stderr=True, soft_wrap=True)


class _Options:
    config: Path | None = None


def _version(value: bool) -> None:
    if value:
        out.print(f"nbtether {__version__}")
        raise typer.Exit


def _set_config(value: Path | None) -> None:
    if value is not None:
        _Options.config = value


# Accepted before the command and after it (`nbtether --config X status`, `status --config X`).
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", envvar="NBTETHER_CONFIG", help="The daemon config file.",
                 callback=_set_config, expose_value=False, show_envvar=True),
]
WaitTimeout = Annotated[
    float, typer.Option("--timeout", min=0, help="Seconds to wait before giving up.")
]


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option("--config", envvar="NBTETHER_CONFIG", help="The daemon config file.",
                     show_envvar=True),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """nbtether: declare notebooks in files; the daemon keeps them running."""
    _Options.config = config  # the command's own --config, parsed after this, may replace it


def settings(*, detail: bool = False) -> Settings:
    """The config, or exit 3 with `config error: FILE:LINE: …` (the whole report if `detail`)."""
    try:
        return load_settings(_Options.config)
    except ConfigError as exc:
        lines = (exc.detail if detail else str(exc)).splitlines()
        err.print(f"[red]config error:[/red] {lines[0]}", highlight=False)
        for line in lines[1:]:
            err.print(line, markup=False, highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None


@app.command()
def run(
    json_logs: Annotated[
        bool | None, typer.Option("--json-logs/--console-logs", help="Log format (default: auto).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run the daemon in the foreground until SIGTERM, SIGINT or SIGHUP (jobs keep running)."""
    from nbtether.app import Daemon
    from nbtether.logconfig import configure

    configure(json=json_logs)
    try:
        asyncio.run(Daemon(settings(detail=True), config_path=_Options.config).run())
    except AlreadyRunning as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_INVALID) from exc
    except ConfigError as exc:
        err.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(EXIT_CONFIG) from exc


@app.command()
def demo(config: ConfigOption = None) -> None:
    """Try nbtether here: a notebook on this machine, its URL shown once it answers;
    Ctrl-C stops the daemon and the notebook (exit 1 if the notebook could not start)."""
    from nbtether.demo import run_demo
    from nbtether.logconfig import configure

    configure(json=False)
    try:
        served = asyncio.run(run_demo(settings(detail=True), _Options.config, out, err))
    except (DemoUnavailable, AlreadyRunning) as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(EXIT_INVALID) from exc
    if not served:
        raise typer.Exit(EXIT_INVALID)


def status_rows(config: Settings, store: StateStore, running: bool) -> list[dict[str, Any]]:
    """One status row per session: the daemon's records, and files it has not looked at yet.

    Without a daemon nothing is reachable: no row has a URL, and each says what it last was.
    """
    records = store.load_all()
    specs = load_sessions(config.sessions_dir, config.clusters,
                          refuse=refusal(config.clusters),
                          clusters_from=config.describe_clusters())
    now = datetime.now(UTC)
    rows = []
    for name in sorted(set(records) | set(specs)):
        record = records.get(name) or _unseen(name, specs[name], running)
        row = record.status(now)
        if not running and name in records:
            gone = "; its file is deleted" if name not in specs else ""
            row["url"] = None
            row["message"] = f"the daemon is not running (last: {record.phase}{gone})"
        rows.append(row)
    return rows


def _unseen(name: str, spec: Spec, running: bool) -> Record:
    if isinstance(spec, InvalidSpec):
        return Record(name=name, cluster="", token="", local_port=None, phase="invalid",
                      message=spec.reason)
    waiting = "the daemon has not read it yet" if running else "the daemon is not running"
    return Record(name=name, cluster=spec.cluster, token="", local_port=spec.local_port,
                  message=f"not started: {waiting}")


def _waited(config: Settings, name: str, timeout: float) -> Record:
    """Wait for a session to be ready (see `waiting`); exits 1 or 4 if it will not be."""
    from nbtether.waiting import WaitFailed, wait_ready

    def has_file() -> bool:
        return name in {path.stem for path in session_files(config.sessions_dir)}

    try:
        return wait_ready(StateStore(config.state_dir), name, has_file, timeout, err)
    except WaitFailed as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(EXIT_NO_DAEMON if exc.no_daemon else EXIT_INVALID) from None


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="JSON for programs.")] = False,
    wait: Annotated[str | None, typer.Option(
        "--wait", metavar="NAME", help="First wait until this session is ready.")] = None,
    timeout: WaitTimeout = WAIT_TIMEOUT,
    config: ConfigOption = None,
) -> None:
    """One row per session; exit 4 when no daemon is running (nothing is reachable then)."""
    settings_ = settings()
    if wait is not None:
        _waited(settings_, wait, timeout)
    store = StateStore(settings_.state_dir)
    running = store.daemon_running()
    rows = status_rows(settings_, store, running)
    if as_json:
        daemon = {**_daemon_facts(store), "running": running}
        sys.stdout.write(json.dumps({"sessions": rows, "daemon": daemon}) + "\n")
    else:
        if not running:
            err.print("[yellow]the daemon is not running[/yellow]: no session is reachable "
                      "(start it: nbtether run, or nbtether service install)")
        print_table(rows, settings_)
    if not running:
        raise typer.Exit(EXIT_NO_DAEMON)


def print_table(rows: list[dict[str, Any]], config: Settings, console: Console = out) -> None:
    """The status table, then each URL whole on a line of its own, so it can be copied."""
    if not rows:
        console.print(f"no sessions (watching {config.sessions_dir})", highlight=False)
        return
    table = Table("NAME", "PHASE", "JOB", "NODE", "TIME LEFT", "PORT", "MESSAGE", box=None)
    for row in rows:
        left = row["time_left"]
        table.add_row(
            row["name"], _colored(row["phase"]), row["job_id"] or "-", row["node"] or "-",
            f"{left // 3600}:{left % 3600 // 60:02d}" if left is not None else "-",
            str(row["local_port"] or "-"), Text(row["message"]),
        )
    console.print(table)
    for row in rows:
        if row["url"]:
            console.print(f"{row['name']}: {row['url']}", soft_wrap=True, highlight=False)


def _daemon_facts(store: StateStore) -> dict[str, object]:
    facts = store.read_status()
    return {"pid": facts.get("pid"), "heartbeat": facts.get("heartbeat")}


def _colored(phase: str) -> str:
    color = {"ready": "green", "failed": "red", "invalid": "red", "handover": "cyan",
             "login": "magenta"}.get(
        phase, "yellow"
    )
    return f"[{color}]{phase}[/{color}]"


@app.command()
def validate(
    files: Annotated[
        list[Path] | None, typer.Argument(help="Session files (default: all).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Check session files without touching any cluster; exit 1 if any is invalid."""
    settings_ = settings(detail=True)
    named = files or session_files(settings_.sessions_dir)
    ignored = [path for path in named if not_a_session(path)]
    specs = check_files([path for path in named if path not in ignored], settings_.clusters,
                        refuse=refusal(settings_.clusters),
                        clusters_from=settings_.describe_clusters())
    bad = len(ignored)
    if not files:  # the daemon trusts no file in a directory that others can write to
        try:
            check_directory(settings_.sessions_dir)
        except Untrusted as exc:
            bad += 1
            out.print(Text(f"sessions_dir: {exc}", style="red"), highlight=False)
    for path in ignored:
        out.print(Text(str(path), style="red") + f": {not_a_session(path)}; the daemon "
                  "ignores it", highlight=False)
    for file, spec in specs.items():
        if isinstance(spec, InvalidSpec):
            bad += 1
            out.print(Text(str(file), style="red") + f": {spec.reason}", highlight=False)
        else:
            out.print(Text(str(file), style="green") + ": ok", highlight=False)
    if not files:
        for path, reason in ignored_files(settings_.sessions_dir).items():
            out.print(Text(str(path), style="yellow") + f": {reason}; the daemon ignores it",
                      highlight=False)
    if not named:
        out.print(f"no session files in {settings_.sessions_dir}", highlight=False)
    if bad:
        raise typer.Exit(EXIT_INVALID)


def _record(config: Settings, name: str) -> Record:
    record = StateStore(config.state_dir).load(name)
    if record is None:
        err.print(f"no session named {name!r} (see nbtether status)")
        raise typer.Exit(EXIT_INVALID)
    return record


@app.command("open")
def open_(
    name: Annotated[str, typer.Argument(help="Session name.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it is ready.")] = False,
    timeout: WaitTimeout = WAIT_TIMEOUT,
    config: ConfigOption = None,
) -> None:
    """Open the session's notebook in the browser (or show its URL when there is none).

    An idle session is started first, and waited for."""
    from nbtether.browser import open_url

    settings_ = settings()
    store = StateStore(settings_.state_dir)
    idle = store.load(name)
    if idle is not None and idle.phase == "idle" and idle.local_port and store.daemon_running():
        from nbtether.waiting import wake

        wake(idle.local_port)  # as a browser would: the daemon starts a job
        err.print(f"{name} was idle: starting a job", highlight=False)
        wait = True
    if wait:
        record = _waited(settings_, name, timeout)
    else:
        record = _record(settings_, name)
        if not store.daemon_running():
            err.print(f"the daemon is not running, so {name} is not reachable "
                      "(start it: nbtether run)")
            raise typer.Exit(EXIT_NO_DAEMON)
    if record.url is None:
        err.print(f"{name} is not ready ({record.phase}: {record.message}); "
                  f"nbtether open --wait {name} waits for it", highlight=False)
        raise typer.Exit(EXIT_INVALID)
    if open_url(record.url, store.root / "open", name):
        err.print(f"opened {name} in the browser", highlight=False)
        return
    err.print(f"no browser can be started here; open {name} at this URL (it holds the token: "
              "keep it to yourself):", highlight=False)
    out.print(record.url, markup=False, highlight=False)


@app.command()
def logs(
    name: Annotated[str, typer.Argument(help="Session name.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
    config: ConfigOption = None,
) -> None:
    """Print the current (or else the last) job's output (Jupyter's log) from the cluster."""
    from nbtether.oneshot import print_output

    settings_ = settings()
    record = _record(settings_, name)
    state = f"{record.phase}: {record.message}" if record.message else record.phase
    if record.job_id is None and record.previous_job_id is None:
        err.print(f"{name} has had no job yet ({state}); its output is here once one starts",
                  highlight=False)
        raise typer.Exit(EXIT_INVALID)
    if record.job_id is None:
        err.print(f"{name} has no job now ({state}); the output of its last job, "
                  f"{record.previous_job_id}:", highlight=False)
        record = record.model_copy(update={"job_id": record.previous_job_id})
    raise typer.Exit(asyncio.run(print_output(settings_, record, follow)))


@app.command()
def check(
    name: Annotated[
        str | None, typer.Argument(help="Session name (default: every valid session).")
    ] = None,
    install: Annotated[
        bool, typer.Option("--install", help="Create the declared venv and install jupyterlab.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Preflight sessions against their clusters without submitting; exit 1 if a check fails."""
    import logging

    from nbtether import preflight
    from nbtether.logconfig import configure

    configure(json=False, level=logging.ERROR)  # failures are reported below, not logged
    settings_ = settings()
    specs = load_sessions(settings_.sessions_dir, settings_.clusters,
                          refuse=refusal(settings_.clusters),
                          clusters_from=settings_.describe_clusters())
    if name is not None and not isinstance(specs.get(name), SessionSpec):
        spec = specs.get(name)
        why = spec.reason if isinstance(spec, InvalidSpec) else "no such session file"
        err.print(f"{name}: {why} (in {settings_.sessions_dir})", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID)
    chosen = {n: s for n, s in specs.items() if isinstance(s, SessionSpec)
              and (name is None or n == name)}
    for skipped in sorted(set(specs) - set(chosen) if name is None else ()):
        err.print(f"skipping {skipped}: invalid (see nbtether validate)", markup=False)
    if not chosen:
        out.print(f"no valid session files in {settings_.sessions_dir}", markup=False)
        return

    def progress(line: str) -> None:
        err.print(f"  install | {line}", markup=False, highlight=False)

    reports = asyncio.run(preflight.check_sessions(settings_, chosen, install=install,
                                                   progress=progress))
    for report in reports:
        out.print(f"{report.session} (cluster {report.cluster})", markup=False, highlight=False)
        for item in report.checks:
            style = {"ok": "green", "fail": "red", "skip": "yellow"}[item.status]
            line = Text(f"  {item.status.upper():<5}", style=style)
            line.append(f"{item.name:<19} {item.detail}")
            out.print(line, soft_wrap=True, highlight=False)
            if item.hint and item.status != "ok":
                out.print(Text(f"{'':7}fix: {item.hint}"), soft_wrap=True, highlight=False)
    if not all(report.ok for report in reports):
        raise typer.Exit(EXIT_INVALID)


def _show(text: str) -> str:
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


def _answer(challenge: Challenge, interactive: bool) -> list[str]:
    """Show one challenge as the server worded it and read one answer per prompt."""
    for text in (challenge.name, challenge.instructions):
        if text:
            sys.stderr.write(_show(text).rstrip("\n") + "\n")
    answers = []
    for prompt, echo in challenge.prompts:
        if interactive:
            answers.append(input(_show(prompt)) if echo else getpass.getpass(_show(prompt)))
            continue
        sys.stderr.write(_show(prompt) + "\n")
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            raise EOFError("no more answers on standard input")
        answers.append(line.rstrip("\r\n"))
    return answers


@app.command()
def login(
    cluster: Annotated[str, typer.Argument(help="Cluster name, as in the config's `clusters`.")],
    config: ConfigOption = None,
) -> None:
    """Log the running daemon in to a cluster that asks for a password or one-time code.

    Shows each of the server's prompts and passes the answers to the daemon; with standard
    input not a terminal, reads one answer per line. Exit 0 once connected, 1 otherwise.
    """
    from nbtether import control

    settings_ = settings()
    interactive = sys.stdin.isatty()
    try:
        ok, message = control.login(control.socket_path(settings_.state_dir), cluster,
                                    lambda challenge: _answer(challenge, interactive))
    except control.DaemonUnreachable as exc:
        err.print(f"the daemon is not running on {settings_.state_dir} (start it: nbtether run)",
                  markup=False)
        raise typer.Exit(EXIT_INVALID) from exc
    except (KeyboardInterrupt, EOFError) as exc:
        err.print(f"\nlogin to {cluster} cancelled ({exc or 'interrupted'})", markup=False)
        raise typer.Exit(EXIT_INVALID) from exc
    if not ok:
        err.print(f"login to {cluster} failed: {message}", markup=False)
        raise typer.Exit(EXIT_INVALID)
    out.print(message, markup=False, highlight=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of session files (for editors: yaml-language-server)."""
    sys.stdout.write(json.dumps(SessionSpec.model_json_schema(), indent=2) + "\n")


service_app = typer.Typer(help="Install or remove the per-user service (systemd or launchd).")
app.add_typer(service_app, name="service")


def _report(outcome: service.Outcome, verb: str) -> None:
    out.print(f"{verb} {outcome.path}", highlight=False)
    for line in outcome.done:
        out.print(f"ran: {line}", highlight=False)
    if outcome.todo:
        out.print(f"{outcome.why}; run yourself:", highlight=False)
        for line in outcome.todo:
            out.print(f"  {line}", highlight=False)


@service_app.command("install")
def service_install() -> None:
    """Write the user unit (Linux) or LaunchAgent (macOS), enable and start it; exit 1 if it
    could not be enabled here (the commands to run are printed)."""
    outcome = service.install()
    _report(outcome, "wrote")
    if outcome.todo:
        err.print("[red]the service is not enabled[/red]: run the commands above")
        raise typer.Exit(EXIT_INVALID)


@service_app.command("uninstall")
def service_uninstall() -> None:
    """Stop and remove the service; running notebooks keep their jobs."""
    _report(service.uninstall(), "removed")
