"""The `nbtether` command line."""

from __future__ import annotations

import asyncio
import getpass
import json
import re
import sys
import webbrowser
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from nbtether import __version__, service
from nbtether.backends.kinds import refusal
from nbtether.config import Settings, load_settings
from nbtether.errors import AlreadyRunning, ConfigError
from nbtether.spec import InvalidSpec, SessionSpec, check_files, load_sessions, session_files
from nbtether.state import Record, StateStore
from nbtether.trust import Untrusted, check_directory

if TYPE_CHECKING:
    from nbtether.control import Challenge

EXIT_INVALID = 1  # invalid file, failed check or login, unknown/unready session, daemon running
EXIT_CONFIG = 3  # the daemon config is unusable
HEARTBEAT_STALE = 30.0
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


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option("--config", envvar="NBTETHER_CONFIG", help="The daemon config file."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """nbtether: declare notebooks in files; the daemon keeps them running."""
    _Options.config = config


def settings() -> Settings:
    """The config, or exit 3 with the reason."""
    try:
        return load_settings(_Options.config)
    except ConfigError as exc:
        err.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(EXIT_CONFIG) from exc


@app.command()
def run(
    json_logs: Annotated[
        bool | None, typer.Option("--json-logs/--console-logs", help="Log format (default: auto).")
    ] = None,
) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT (jobs keep running)."""
    from nbtether.app import Daemon
    from nbtether.logconfig import configure

    configure(json=json_logs)
    try:
        asyncio.run(Daemon(settings()).run())
    except AlreadyRunning as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_INVALID) from exc
    except ConfigError as exc:
        err.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(EXIT_CONFIG) from exc


def _records(config: Settings) -> dict[str, Record]:
    return StateStore(config.state_dir).load_all()


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="JSON for programs.")] = False,
) -> None:
    """One row per session, from the daemon's state directory."""
    config = settings()
    store = StateStore(config.state_dir)
    records = store.load_all()
    now = datetime.now(UTC)
    rows = [records[name].status(now) for name in sorted(records)]
    if as_json:
        sys.stdout.write(json.dumps({"sessions": rows, "daemon": _daemon_state(store)}) + "\n")
        return
    table = Table("NAME", "PHASE", "JOB", "NODE", "TIME LEFT", "PORT", "MESSAGE", box=None)
    for row in rows:
        left = row["time_left"]
        table.add_row(
            row["name"], _colored(row["phase"]), row["job_id"] or "-", row["node"] or "-",
            f"{left // 3600}:{left % 3600 // 60:02d}" if left is not None else "-",
            str(row["local_port"] or "-"), row["message"],
        )
    out.print(table if rows else f"no sessions (watching {config.sessions_dir})")
    for row in rows:  # whole, on lines of their own, so they can be copied
        if row["url"]:
            out.print(f"{row['name']}: {row['url']}", soft_wrap=True, highlight=False)
    daemon = _daemon_state(store)
    if not daemon["running"]:
        err.print("[yellow]the daemon is not running[/yellow] (start it: nbtether run)")


def _daemon_state(store: StateStore) -> dict[str, object]:
    facts = store.read_status()
    beat = facts.get("heartbeat")
    age = (datetime.now(UTC) - datetime.fromisoformat(beat)).total_seconds() if beat else None
    return {"running": age is not None and age < HEARTBEAT_STALE, "pid": facts.get("pid"),
            "heartbeat": beat}


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
) -> None:
    """Check session files without touching any cluster; exit 1 if any is invalid."""
    config = settings()
    specs = check_files(files or session_files(config.sessions_dir), config.clusters,
                        refuse=refusal(config.clusters))
    bad = 0
    if not files:  # the daemon trusts no file in a directory that others can write to
        try:
            check_directory(config.sessions_dir)
        except Untrusted as exc:
            bad += 1
            out.print(Text(f"sessions_dir: {exc}", style="red"), highlight=False)
    for file, spec in specs.items():
        if isinstance(spec, InvalidSpec):
            bad += 1
            out.print(Text(str(file), style="red") + f": {spec.reason}", highlight=False)
        else:
            out.print(Text(str(file), style="green") + ": ok", highlight=False)
    if not specs:
        out.print(f"no session files in {config.sessions_dir}")
    if bad:
        raise typer.Exit(EXIT_INVALID)


def _record(config: Settings, name: str) -> Record:
    record = _records(config).get(name)
    if record is None:
        err.print(f"no session named {name!r} (see nbtether status)")
        raise typer.Exit(EXIT_INVALID)
    return record


@app.command("open")
def open_(name: Annotated[str, typer.Argument(help="Session name.")]) -> None:
    """Open the session's notebook in the browser."""
    record = _record(settings(), name)
    if record.url is None:
        err.print(f"{name} is not ready ({record.phase}: {record.message})")
        raise typer.Exit(EXIT_INVALID)
    webbrowser.open(record.url)


@app.command()
def logs(
    name: Annotated[str, typer.Argument(help="Session name.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
) -> None:
    """Print the current job's output (Jupyter's log) from the cluster."""
    from nbtether.oneshot import print_output

    config = settings()
    record = _record(config, name)
    if record.job_id is None:
        err.print(f"{name} has no job ({record.phase}: {record.message})")
        raise typer.Exit(EXIT_INVALID)
    raise typer.Exit(asyncio.run(print_output(config, record, follow)))


@app.command()
def check(
    name: Annotated[
        str | None, typer.Argument(help="Session name (default: every valid session).")
    ] = None,
    install: Annotated[
        bool, typer.Option("--install", help="Create the declared venv and install jupyterlab.")
    ] = False,
) -> None:
    """Preflight sessions against their clusters without submitting; exit 1 if a check fails."""
    import logging

    from nbtether import preflight
    from nbtether.logconfig import configure

    configure(json=False, level=logging.ERROR)  # failures are reported below, not logged
    config = settings()
    specs = load_sessions(config.sessions_dir, config.clusters,
                          refuse=refusal(config.clusters))
    if name is not None and not isinstance(specs.get(name), SessionSpec):
        spec = specs.get(name)
        why = spec.reason if isinstance(spec, InvalidSpec) else "no such session file"
        err.print(f"{name}: {why} (in {config.sessions_dir})", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID)
    chosen = {n: s for n, s in specs.items() if isinstance(s, SessionSpec)
              and (name is None or n == name)}
    for skipped in sorted(set(specs) - set(chosen) if name is None else ()):
        err.print(f"skipping {skipped}: invalid (see nbtether validate)", markup=False)
    if not chosen:
        out.print(f"no valid session files in {config.sessions_dir}", markup=False)
        return
    reports = asyncio.run(preflight.check_sessions(config, chosen, install=install))
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
) -> None:
    """Log the running daemon in to a cluster that asks for a password or one-time code.

    Shows each of the server's prompts and passes the answers to the daemon; with standard
    input not a terminal, reads one answer per line. Exit 0 once connected, 1 otherwise.
    """
    from nbtether import control

    config = settings()
    interactive = sys.stdin.isatty()
    try:
        ok, message = control.login(control.socket_path(config.state_dir), cluster,
                                    lambda challenge: _answer(challenge, interactive))
    except control.DaemonUnreachable as exc:
        err.print(f"the daemon is not running on {config.state_dir} (start it: nbtether run)",
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
    out.print(f"{verb} {outcome.path}")
    for line in outcome.done:
        out.print(f"ran: {line}")
    if outcome.todo:
        out.print("the service manager is not available here; run yourself:")
        for line in outcome.todo:
            out.print(f"  {line}")


@service_app.command("install")
def service_install() -> None:
    """Write the user unit (Linux) or LaunchAgent (macOS), enable and start it."""
    _report(service.install(), "wrote")


@service_app.command("uninstall")
def service_uninstall() -> None:
    """Stop and remove the service; running notebooks keep their jobs."""
    _report(service.uninstall(), "removed")
