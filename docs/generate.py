"""Write docs/reference.md and docs/session.schema.json from the code, and the example output
in docs/getting-started.md, so they cannot drift.

    python docs/generate.py           rewrite the files
    python docs/generate.py --check   exit 1 if a file differs from what the code says

The tables come from the pydantic models (`nbtether.config`, `nbtether.spec`), the status
record (`nbtether.state`) and the typer app (`nbtether.cli`). The few texts kept here (what a
status key or a phase means) are checked against the code: a key or phase added to the code
without a text here stops the generator.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import re
import sys
import types
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "daemon"))  # the working tree, installed or not

import annotated_types  # noqa: E402
import typer  # noqa: E402
from pydantic import AfterValidator, BaseModel, BeforeValidator  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402
from rich.console import Console  # noqa: E402
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption  # noqa: E402

from nbtether import cli, config, jobs, spec, state  # noqa: E402

REFERENCE = DOCS / "reference.md"
SCHEMA = DOCS / "session.schema.json"
GETTING_STARTED = DOCS / "getting-started.md"

# Named value formats of the models: a label for the type column and a short note.
FORMATS: dict[str, tuple[str, str]] = {
    "Name": ("name", "cluster and session names"),
    "ExpandedPath": ("local path", "a path on this machine; a leading `~` is expanded"),
    "SlurmWord": ("SLURM word", "partition, reservation, account and QOS names"),
    "SiteWord": ("site word", "a Grid Engine parallel environment or resource name"),
    "Constraint": ("constraint", "a SLURM feature expression, e.g. `avx512&ib`"),
    "Memory": ("memory", "a number with an optional unit K, M, G or T, as for `--mem`"),
    "ModuleName": ("module", "an environment module name, e.g. `python/3.11.6-gcc-13.2.0`"),
    "RemotePath": ("remote path", "a path on the cluster; `~` or `~/…` is your home there"),
    "AddressPrefix": ("address prefix", "the start of an IPv4 or IPv6 address"),
    "SetupLine": ("shell line", "one line of shell, run as written"),
    "Walltime": ("SLURM time", "a bare number is minutes; `02:00:00` needs no quotes"),
    "Duration": ("duration", "a number with `s`, `m`, `h` or `d`"),
}

STATUS_KEYS: dict[str, str] = {
    "name": "Session name (the file name without `.yaml`).",
    "phase": "One of the [phases](#phases).",
    "job_id": "The job serving (or about to serve) the session, or null. For `kind: local` "
    "it is the Jupyter process id.",
    "node": "Compute node of the notebook once it is ready, else null.",
    "local_port": "The fixed local port.",
    "url": "The notebook URL while the phase is `ready` or `handover`, else null.",
    "message": "Detail: pending reason, error, time left.",
    "restarts": "How many times the session got a new job (resubmissions and handovers).",
    "cluster": "The cluster the session runs on.",
    "time_left": "Seconds until the current job's walltime ends, or null.",
}

DAEMON_KEYS: dict[str, str] = {
    "running": "True while a daemon holds the state directory (its lock on `daemon.lock`); "
    "a stopped or killed daemon reads as false at once. While false, no session has a `url`, "
    "and `status` exits 4.",
    "pid": "Process id of the daemon that last wrote the heartbeat, or null.",
    "heartbeat": "Time of that heartbeat (ISO 8601, UTC), or null.",
}

PHASES: dict[str, str] = {
    "pending": "Waiting for a job: submitting, queued (the message gives SLURM's reason), or "
    "waiting to resubmit.",
    "starting": "The job runs; Jupyter is not reachable yet.",
    "ready": "The notebook answers through the tunnel at `url`.",
    "handover": "Ready on the old job, whose walltime ends soon; a successor starts and "
                "waits, unrouted, for the switch at that end. `message` says when the "
                "kernel stops.",
    "stopping": "The file was deleted: cancelling the jobs and closing the port.",
    "failed": "Stopped trying; `message` says why. After a rejected submission, repeated "
    "failures or the restart policy, an edit to `cluster`, `resources`, `environment` or "
    "`jupyter` tries again; a taken `local_port` is tried again every 30 s.",
    "invalid": "The file does not validate; `message` names the field. A running job is "
    "left alone.",
    "login": "The cluster's login node asks for a password or one-time code: `message` names "
    "the `nbtether login CLUSTER` to run. Jobs are left alone (not resubmitted, not "
    "cancelled, not counted as failures); nothing is retried until that command runs.",
    "idle": "No job, on purpose: `start: on_demand` before first use, or stopped by "
    "`idle_stop` (`message` says when and after how long). The port listens; the next "
    "request there (a page opened or reloaded, `nbtether open`, a program) starts a job "
    "at the same URL. Neither a failure nor a restart.",
}


def _check_texts(what: str, texts: dict[str, str], actual: list[str]) -> None:
    missing, extra = set(actual) - set(texts), set(texts) - set(actual)
    if missing or extra:
        raise SystemExit(
            f"docs/generate.py: {what} differ from the code: "
            f"undocumented {sorted(missing)}, gone {sorted(extra)}"
        )


# ---------------------------------------------------------------- types and defaults


def _aliases() -> dict[int, str]:
    """The module-level `Annotated` aliases of config and spec, by object id."""
    found: dict[int, str] = {}
    for module in (config, spec):
        for name, value in vars(module).items():
            if get_origin(value) is Annotated:
                found[id(value)] = name
    return found


ALIASES = _aliases()


def _format_of(tp: object) -> str | None:
    name = ALIASES.get(id(tp))
    if name is None and _pattern(tp) == config.NAME_PATTERN:
        name = "Name"
    if name is None:
        return None
    if name not in FORMATS:
        raise SystemExit(f"docs/generate.py: no entry in FORMATS for the type {name}")
    return name


def _pattern(tp: object) -> str | None:
    for meta in getattr(tp, "__metadata__", ()):
        pattern = getattr(meta, "pattern", None)
        if pattern is None and isinstance(meta, FieldInfo):
            pattern = next((getattr(m, "pattern", None) for m in meta.metadata), None)
        if isinstance(pattern, str):
            return pattern
    return None


def _bounds(metadata: list[Any]) -> str:
    low = high = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low = item.ge
        elif isinstance(item, annotated_types.Le):
            high = item.le
    if low is not None and high is not None:
        return f" {low:g} to {high:g}"
    if low is not None:
        return f", at least {low:g}"
    if high is not None:
        return f", at most {high:g}"
    return ""


BASIC = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path",
         timedelta: "duration"}


def render_type(tp: object, metadata: list[Any] | None = None) -> str:
    """A type as a reader wants it: `one of a, b`, `list of module`, `integer 1 to 64`."""
    name = _format_of(tp)
    if name is not None:
        return f"[{FORMATS[name][0]}](#value-formats)"
    origin = get_origin(tp)
    args = get_args(tp)
    if origin in (Union, types.UnionType):
        parts = [render_type(arg, metadata) for arg in args if arg is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(f"`{arg}`" for arg in args)
    if origin is list:
        return f"list of {render_type(args[0])}"
    if origin is dict:
        return f"mapping of {render_type(args[0])} to {render_type(args[1])}"
    if origin is Annotated:
        return render_type(args[0], metadata)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping"
    if isinstance(tp, type) and tp in BASIC:
        return BASIC[tp] + _bounds(metadata or [])
    return str(tp)


HOME = "/home/YOU"  # stands for `~` while defaults are computed


def _tilde(text: str) -> str:
    return "~" + text[len(HOME):] if text.startswith(HOME) else text


@contextlib.contextmanager
def _generic_home() -> Iterator[None]:
    """Compute default paths as `~/…` whoever runs the generator."""
    keys = ("HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ["HOME"] = HOME
    for key in keys[1:]:
        os.environ.pop(key, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _validators(tp: object) -> list[Any]:
    for arg in (tp, *get_args(tp)):
        if get_origin(arg) is Annotated:
            return list(getattr(arg, "__metadata__", ()))
    return []


def render_value(value: object, tp: object) -> str:
    """A default value as it would be written in YAML."""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
        if _format_of(tp) == "Walltime":
            text = f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
            return f'`"{text}"`'
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds and seconds % size == 0:
                return f"`{seconds // size}{unit}`"
        return f"`{seconds}s`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    return f"`{_tilde(str(value))}`"


def render_default(field: FieldInfo, tp: object) -> str:
    """`required`, or the default of a field (factories are called)."""
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        with _generic_home():
            value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "see below"
        return render_value(value, tp)
    return render_value(field.default, tp)


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def _first_line(doc: str | None) -> str:
    return inspect.cleandoc(doc or "").split("\n\n", 1)[0].replace("\n", " ")


# ---------------------------------------------------------------- models


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped."""
    return re.sub(r"[^a-z0-9_ -]", "", heading.lower()).replace(" ", "-")


def model_rows(model: type[BaseModel], prefix: str) -> tuple[list[tuple[str, ...]], list[Any]]:
    """Rows for a model's fields, and the nested models met on the way (rendered apart)."""
    hints = get_type_hints(model, include_extras=True)
    rows: list[tuple[str, ...]] = []
    nested: list[Any] = []
    for name, field in model.model_fields.items():
        tp = hints[name]
        key = f"`{prefix}{name}`"
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            child = f"{prefix}{name}"
            rows.append((key, "mapping", "see below",
                         f"{_first_line(tp.__doc__)} See [`{child}`](#{_anchor(child)})."))
            nested.append((child, tp))
            continue
        if get_origin(tp) is dict and issubclass(get_args(tp)[1], BaseModel):
            child = f"{prefix}{name}.<name>"
            rows.append((key, f"mapping of {render_type(get_args(tp)[0])} to mapping",
                         render_default(field, tp),
                         f"{field.description or ''} See [`{child}`](#{_anchor(child)})."))
            nested.append((child, get_args(tp)[1]))
            continue
        rows.append((key, render_type(tp, field.metadata), render_default(field, tp),
                     field.description or ""))
    return rows, nested


def model_section(model: type[BaseModel], prefix: str, level: int) -> list[str]:
    """A table per model, each nested model in its own subsection."""
    rows, nested = model_rows(model, prefix)
    lines = table(("key", "type", "default", "description"), rows)
    for path, child in nested:
        lines += ["", f"{'#' * level} `{path}`", "", _first_line(child.__doc__), ""]
        lines += model_section(child, f"{path}.", level + 1)
    return lines


def formats_section() -> list[str]:
    """The named value formats: label, what is accepted, a note."""
    rows = []
    used: dict[str, object] = {"Name": None}
    for module in (config, spec):
        for name, value in vars(module).items():
            if id(value) in ALIASES and name in FORMATS:
                used[name] = value
    for name, value in used.items():
        label, note = FORMATS[name]
        pattern = config.NAME_PATTERN if value is None else _pattern(value)
        if pattern is not None:
            accepts = f"`{pattern}`"
        else:
            parsers = [m.func for m in _validators(value)
                       if isinstance(m, BeforeValidator | AfterValidator)]
            accepts = _first_line(parsers[0].__doc__) if parsers else ""
            accepts = accepts.removeprefix("Parse ").rstrip(".")
            accepts = accepts or "any " + render_type(get_args(value)[0])
        rows.append((label, accepts, note))
    return table(("format", "accepts", "note"), rows)


# ---------------------------------------------------------------- commands


def _synopsis(path: str, command: TyperCommand | TyperGroup) -> str:
    words = [path]
    for param in command.params:
        if isinstance(param, TyperArgument):
            word = (param.name or "").upper()
            word = f"{word}…" if param.nargs == -1 else word
            words.append(word if param.required else f"[{word}]")
        elif isinstance(param, TyperOption) and not param.hidden:
            opts = "|".join(param.opts) + "".join(f"/{o}" for o in param.secondary_opts)
            value = "" if param.is_flag else f" {(param.name or '').upper()}"
            words.append(f"[{opts}{value}]")
    return " ".join(words)


# typer's own options; their help differs with the shells it detects, so only named here.
COMPLETION = ("install_completion", "show_completion")


def _param_rows(command: TyperCommand | TyperGroup) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for param in command.params:
        if (isinstance(param, TyperOption) and param.hidden) or param.name in COMPLETION:
            continue
        if isinstance(param, TyperArgument):
            name = f"`{(param.name or '').upper()}`"
        elif isinstance(param, TyperOption):
            value = "" if param.is_flag else f" {(param.name or '').upper()}"
            name = ", ".join(f"`{opt}{value}`" for opt in param.opts + param.secondary_opts)
        else:
            raise SystemExit(f"docs/generate.py: unexpected parameter {param!r}")
        help_text = str(getattr(param, "help", "") or "")
        if isinstance(param, TyperOption) and param.envvar:
            help_text += f" Env: `{param.envvar}`."
        default = param.default
        shown = "" if default is None or param.required else render_value(default, None)
        rows.append((name, help_text, shown))
    return rows


def _commands(
    path: str, group: TyperGroup
) -> Iterator[tuple[str, TyperCommand | TyperGroup]]:
    for name, command in group.commands.items():
        full = f"{path} {name}"
        if isinstance(command, TyperGroup):
            yield from _commands(full, command)
        elif isinstance(command, TyperCommand):
            yield full, command
        else:
            raise SystemExit(f"docs/generate.py: unexpected command {command!r}")


def commands_section() -> list[str]:
    """Every command with its synopsis, help and options, from the typer app."""
    root = typer.main.get_command(cli.app)
    assert isinstance(root, TyperGroup)
    lines = [_first_line(root.help), "", "Options for every command (`--config` also after "
             "the command name: `nbtether --config FILE status` or `nbtether status --config "
             "FILE`):", ""]
    lines += table(("option", "description", "default"), _param_rows(root))
    lines += ["", "`--install-completion` and `--show-completion` set up shell completion."]
    for path, command in _commands("nbtether", root):
        lines += ["", f"### `{path}`", "", "```", _synopsis(path, command), "```", "",
                  inspect.cleandoc(command.help or "")]
        rows = _param_rows(command)
        if rows:
            lines += ["", *table(("argument or option", "description", "default"), rows)]
    return lines


def exit_codes_section() -> list[str]:
    """Exit codes: 0 and click's 2, and the EXIT_ constants of cli.py with their comments."""
    rows = [("0", "Success.")]
    source = inspect.getsource(cli)
    found = re.findall(r"^EXIT_\w+ = (\d+)\s*#\s*(.+)$", source, re.MULTILINE)
    rows += [(code, text.strip().capitalize().rstrip(".") + ".") for code, text in found]
    rows.append(("2", "Usage error: unknown command or option, missing argument (click)."))
    rows.sort(key=lambda row: int(row[0]))
    return table(("code", "meaning"), rows)


# ---------------------------------------------------------------- status


def status_section() -> list[str]:
    """The keys of `nbtether status --json` and the phases, checked against the code."""
    example = state.Record.new("example", "cluster", 8888)
    keys = list(example.status())
    _check_texts("status keys", STATUS_KEYS, keys)
    daemon_keys = ["running", *cli._daemon_facts(state.StateStore(Path("/nonexistent")))]
    _check_texts("daemon keys", DAEMON_KEYS, daemon_keys)
    phases = list(get_args(state.Phase))
    _check_texts("phases", PHASES, phases)
    paths = ", ".join(f"`{app}` → `/{path}`" for app, path in state.APP_PATHS.items())
    lines = [
        '`nbtether status --json` prints one JSON object: `{"sessions": [...], "daemon": '
        "{...}}`. Each session:",
        "",
        *table(("key", "meaning"), [(f"`{key}`", STATUS_KEYS[key]) for key in keys]),
        "",
        "The URL is `http://127.0.0.1:<local_port>/<path>?token=<token>`, with the path "
        f"by `jupyter.app`: {paths}. The token has {len(example.token)} hex digits and stays "
        "the same for the life of the session file.",
        "",
        "`daemon`:",
        "",
        *table(("key", "meaning"), [(f"`{key}`", DAEMON_KEYS[key]) for key in daemon_keys]),
        "",
        "### Phases",
        "",
        *table(("phase", "meaning"), [(f"`{phase}`", PHASES[phase]) for phase in phases]),
    ]
    return lines


# ---------------------------------------------------------------- the files


def reference() -> str:
    """The whole of docs/reference.md."""
    settings_config = config.Settings.model_config
    prefix = settings_config.get("env_prefix", "")
    nested = settings_config.get("env_nested_delimiter", "")
    forbid = spec.SessionSpec.model_config.get("extra") == "forbid"
    with _generic_home():
        default_file = _tilde(str(config.default_config_file()))
    lines = [
        "# Reference",
        "",
        "<!-- Generated by docs/generate.py from the code. Do not edit: run "
        "`python docs/generate.py`. -->",
        "",
        "[Daemon config](#daemon-config) · [Session files](#session-files) · "
        "[Value formats](#value-formats) · [Status](#status) · [Commands](#commands) · "
        "[Exit codes](#exit-codes)",
        "",
        "## Daemon config",
        "",
        f"`{default_file}` unless `--config FILE` or `NBTETHER_CONFIG` names another file "
        "(which must then exist). A missing default file means all defaults and one built-in "
        f"cluster, `{config.BUILTIN_CLUSTER}` (`kind: local`), which is what `nbtether demo` "
        "uses. "
        "`~/.config` and `~/.local/state` stand for `$XDG_CONFIG_HOME` and "
        "`$XDG_STATE_HOME` when those are set.",
        "",
        f"Every key can also come from the environment, prefix `{prefix}`, nesting with "
        f"`{nested}`; the environment wins over the file. Names are case-insensitive, so "
        "a cluster defined there gets a lower-case name: "
        f"`{prefix}STATE_DIR=/tmp/nbt`, `{prefix}CLUSTERS{nested}CREATE{nested}HOST=hpc."
        "example.org` (cluster `create`).",
        "",
        "Unknown keys are errors, and every error names the file and line: "
        "`config error: FILE:LINE: key: reason` (exit 3; a YAML syntax error also shows the "
        "line with a `^` under the column in `validate` and `run`).",
        "",
        "The daemon reads the config at start and again whenever the file changes, without a "
        "restart: a cluster whose settings changed gets a new connection (its sessions "
        "reconnect; their jobs are kept), other clusters are left alone, and `notifications` "
        "applies at once. `sessions_dir` and `state_dir` change only at the next start. An "
        "invalid config is logged (`config error; the last good config stays in force`) and "
        "changes nothing.",
        "",
        *model_section(config.Settings, "", 3),
        "",
        "## Session files",
        "",
        "`<sessions_dir>/<name>.yaml` (or `.yml`); the file name without the suffix is the "
        "session name, a [name](#value-formats). Files starting with `.` or ending in `~` "
        "are passed over quietly. Any other file is not a session either (another suffix, "
        "`.YAML` in upper case, a `.yml` next to the `.yaml` of the same name): "
        "`nbtether validate` lists each one, and the daemon logs each once. "
        + ("Unknown keys are errors. " if forbid else "")
        + "A change to `cluster`, `resources`, `environment` or `jupyter` replaces the job; "
        "`local_port` and `restart` apply to the running job.",
        "",
        f"Limits: at most {spec.MAX_FILE_BYTES // 1024} KiB and {spec.MAX_DEPTH} levels of "
        "nesting per file, no YAML anchors or aliases. A file is read only when it is a "
        "regular file (or a symlink to one) that belongs to you and that others cannot "
        "write to; anything else, a FIFO or a device included, is `invalid` with the "
        "reason. Messages name fields and positions, never values. See "
        "[security](security.md#session-files-and-directories).",
        "",
        *model_section(spec.SessionSpec, "", 3),
        "",
        *grid_engine_section(),
        "",
        "## Value formats",
        "",
        "Values that reach the batch script or a shell on the cluster must match these "
        "patterns; anything else is rejected by `nbtether validate` and by the daemon.",
        "",
        *formats_section(),
        "",
        "## Status",
        "",
        *status_section(),
        "",
        "## Commands",
        "",
        *commands_section(),
        "",
        "## Exit codes",
        "",
        *exit_codes_section(),
        "",
    ]
    return "\n".join(lines)


def grid_engine_section() -> list[str]:
    """How `resources` become Grid Engine requests on a cluster of `kind: sge`."""
    return [
        "### `resources` on Grid Engine",
        "",
        "On a cluster of `kind: sge` the same session file asks Grid Engine for the same "
        "things; `nbtether validate` and the daemon refuse, with a message saying so, a "
        "resource that Grid Engine has no word for.",
        "",
        "| key | becomes | note |",
        "|---|---|---|",
        "| `partition` | `-q <partition>` | the queue |",
        "| `account` | `-P <account>` | the project |",
        "| `cpus` | `-pe <parallel_environment> <cpus>` | only when more than 1; the cluster's "
        "`parallel_environment` (default `smp`) |",
        "| `mem` | `-l <memory_resource>=<mem ÷ cpus>` | per slot, as Grid Engine counts "
        "memory; the cluster's `memory_resource` (default `h_vmem`) |",
        "| `time` | `-l h_rt=<time>` | the walltime |",
        "| `gpus` | `-l <gpu_resource>=<gpus>` | refused unless the cluster sets `gpu_resource` |",
        "| `reservation` | `-ar <reservation>` | advance reservations are numbers; a name is "
        "refused |",
        "| `qos` | refused | Grid Engine has no quality of service |",
        "| `constraint` | refused | no node features; use a queue |",
        "",
        "Every job also gets `-N nbtether-<instance>-<session>`, `-j y`, `-S /bin/bash` "
        "(with `#!/bin/bash -l`, a login shell) and `-r y` (rerun after a node failure).",
    ]


def schema() -> str:
    """The JSON Schema of session files (as `nbtether schema` prints it)."""
    return json.dumps(spec.SessionSpec.model_json_schema(), indent=2) + "\n"


# ---------------------------------------------------------------- real output in the guides

EXAMPLE_TOKEN = "3f9c0a7d" * 6
STATUS_BLOCK = re.compile(r"(<!-- status: (\w+) -->\n```text\n)(.*?)(```\n)", re.DOTALL)


def status_example(phase: str) -> str:
    """What `nbtether status` prints for the guide's session `analysis` in `phase`, drawn by
    the command's own table code from the record a daemon keeps."""
    now = datetime.now(UTC)
    record = state.Record(name="analysis", cluster="create", token=EXAMPLE_TOKEN,
                          local_port=8888, phase=phase, job_id="15244802",
                          message="queued: Priority")
    if phase == "ready":
        record.endpoint = jobs.Endpoint(node="erc-hpc-comp015", address="10.211.4.15",
                                        port=43117)
        record.ends_at = now + timedelta(hours=1, minutes=59, seconds=30)
        record.message = "1h59m left"
    console = Console(file=io.StringIO(), width=100, record=True, color_system=None)
    cli.print_table([record.status(now)], config.Settings(), console)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def getting_started() -> str:
    """docs/getting-started.md with each marked status block as the command prints it."""
    text = GETTING_STARTED.read_text(encoding="utf-8")
    return STATUS_BLOCK.sub(lambda m: m[1] + status_example(m[2]) + m[4], text)


def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    return {REFERENCE: reference(), SCHEMA: schema(), GETTING_STARTED: getting_started()}


def stale() -> list[Path]:
    """The generated files whose content on disk differs from what the code says."""
    return [path for path, text in outputs().items()
            if not path.is_file() or path.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the files, or with --check report the stale ones and return 1."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"{path.relative_to(DOCS.parent)} is stale: run python docs/generate.py")
        return 1 if old else 0
    for path, text in outputs().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
