"""Session files: the strict model of one notebook's wish, and loading a directory of them."""

from __future__ import annotations

import difflib
import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from nbtether.config import NAME_PATTERN, describe_validation_error
from nbtether.trust import Untrusted, check_directory, read_own_file

SUFFIXES = (".yaml", ".yml")
# Limits on what one session file may make the daemon do: a real one is about 1 KiB and
# 3 levels deep. Beyond these, parsing would cost seconds and megabytes, or overflow the
# stack (the YAML composer recurses once per level).
MAX_FILE_BYTES = 16 * 1024
MAX_DEPTH = 16
MIN_IDLE_STOP = timedelta(minutes=1)

# Values that end up in `#SBATCH` lines or shell words on the cluster. Anything outside these
# sets (spaces, quotes, `;`, `$`, backticks, newlines) is rejected, and shell words are quoted
# as well, so no field can run a command there.
SlurmWord = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+-]{1,128}$")]
Constraint = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.,:|&()\[\]*!-]{1,256}$")]
Memory = Annotated[str, Field(pattern=r"^[0-9]{1,9}[KMGTkmgt]?$")]
ModuleName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+/-]{1,200}$")]
RemotePath = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.~/+@%,:=-]{1,1024}$")]
AddressPrefix = Annotated[str, Field(pattern=r"^[0-9A-Fa-f.:]{1,64}$")]
SetupLine = Annotated[str, Field(pattern=r"^[^\n\r\x00]*$")]

_WALLTIME = re.compile(
    r"^(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
    r"|(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)"
    r"|(?P<mm>\d+):(?P<ms>\d+)"
    r"|(?P<min>\d+))$"
)
_DURATION = re.compile(r"^(?P<n>\d+)\s*(?P<unit>s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SEXAGESIMAL_TAGS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}


def parse_walltime(value: object) -> timedelta:
    """Parse SLURM's `--time` formats (`min`, `min:sec`, `h:m:s`, `d-h`, `d-h:m`, `d-h:m:s`)."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, int) and not isinstance(value, bool):
        result = timedelta(minutes=value)
    elif isinstance(value, str) and (match := _WALLTIME.match(value.strip())):
        parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
        result = timedelta(
            days=parts.get("d", 0),
            hours=parts.get("dh", 0) + parts.get("h", 0),
            minutes=parts.get("dm", 0) + parts.get("m", 0) + parts.get("mm", 0)
            + parts.get("min", 0),
            seconds=parts.get("ds", 0) + parts.get("s", 0) + parts.get("ms", 0),
        )
    else:
        raise ValueError("not a SLURM time (use min, h:m:s, d-h:m:s …)")
    if result <= timedelta(0):
        raise ValueError("must be longer than zero")
    if result > timedelta(days=365):
        raise ValueError("must be at most 365 days")
    return result


def parse_duration(value: object) -> timedelta:
    """Parse a short duration: `90s`, `10m`, `2h`, `1d`, or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return timedelta(seconds=value)
    if isinstance(value, str) and (match := _DURATION.match(value.strip())):
        return timedelta(seconds=int(match["n"]) * _UNIT_SECONDS[match["unit"]])
    raise ValueError("not a duration (use e.g. 90s, 10m, 2h)")


def format_walltime(value: timedelta) -> str:
    """SLURM's `D-HH:MM:SS`, rounded up to whole seconds."""
    seconds = int(-(-value.total_seconds() // 1))
    days, rest = divmod(seconds, 86400)
    return f"{days}-{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


Walltime = Annotated[
    timedelta,
    BeforeValidator(parse_walltime),
    WithJsonSchema({"type": ["string", "integer"],
                    "description": "SLURM time: minutes, h:m:s, d-h, d-h:m or d-h:m:s"}),
]
Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": ["string", "integer"],
                    "description": "seconds, or a number with s, m, h or d (90s, 10m)"}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    """What the job asks SLURM for."""

    partition: SlurmWord | None = Field(None, description="Partition (site default if unset).")
    reservation: SlurmWord | None = Field(None, description="Reservation to run in.")
    account: SlurmWord | None = Field(None, description="Account to charge.")
    qos: SlurmWord | None = Field(None, description="Quality of service.")
    cpus: int = Field(1, ge=1, le=4096, description="CPUs for the notebook (--cpus-per-task).")
    mem: Memory | None = Field(None, description="Memory, e.g. 2G (--mem).")
    time: Walltime = Field(
        timedelta(hours=1), description='Walltime of one job, SLURM format, e.g. "02:00:00".'
    )
    gpus: int = Field(0, ge=0, le=64, description="GPUs (--gpus), 0 for none.")
    constraint: Constraint | None = Field(None, description="Node features (--constraint).")


class Environment(_Strict):
    """How the job finds Jupyter on the cluster."""

    modules: list[ModuleName] = Field(
        default_factory=list, description="`module load` each, in order."
    )
    venv: RemotePath | None = Field(None, description="Python venv to activate (e.g. ~/env).")
    conda: RemotePath | None = Field(None, description="Conda environment name or path.")
    setup: list[SetupLine] = Field(
        default_factory=list,
        description="Extra shell lines run in the job before Jupyter (your own commands).",
    )


class Jupyter(_Strict):
    """How Jupyter runs inside the job."""

    app: Literal["lab", "notebook", "server"] = Field("lab", description="Which Jupyter app.")
    root_dir: Annotated[RemotePath, BeforeValidator(lambda v: "~" if v is None else v)] = Field(
        "~", description="Notebook root on the cluster (`~`, unquoted YAML null, is home)."
    )
    address_prefix: AddressPrefix | None = Field(
        None,
        description="Bind to the node address starting with this (default: the node name).",
    )


class Restart(_Strict):
    """What to do when a job ends while the file still exists."""

    policy: Literal["always", "on-timeout", "never"] = Field(
        "always",
        description="`always`: resubmit after any end; `on-timeout`: only after walltime, "
        "preemption or node failure; `never`: report and stop.",
    )
    handover: Duration = Field(
        timedelta(minutes=10),
        description="Start the successor this long before walltime ends (0s: no handover). "
        "The old job and its kernel serve until 5 s before their end; both jobs are "
        "allocated meanwhile, so about the usual queue wait plus a minute is enough.",
    )
    max_failures: int = Field(
        3, ge=1, le=100, description="Failed starts in a row before giving up."
    )


class SessionSpec(_Strict):
    """One session file: which notebook the user wants, where, and how."""

    cluster: Annotated[str, Field(pattern=NAME_PATTERN)] = Field(
        description="A key of `clusters` in the config."
    )
    local_port: int = Field(
        ge=1024, le=65535, description="The notebook is served at http://127.0.0.1:PORT/."
    )
    resources: Resources = Field(default_factory=Resources)
    environment: Environment = Field(default_factory=Environment)
    jupyter: Jupyter = Field(default_factory=Jupyter)
    restart: Restart = Field(default_factory=Restart)
    start: Literal["always", "on_demand"] = Field(
        "always",
        description="`always`: a job runs while the file exists; `on_demand`: no job until "
        "something connects to local_port (a page opened or reloaded, or a program's request).",
    )
    idle_stop: Duration | None = Field(
        None,
        description="Cancel the job once Jupyter has been unused this long (no kernel busy or "
        "active, no terminal used), e.g. 2h, at least 1m; the port keeps listening and the "
        "next request starts a new job at the same URL. Kernel state and edits not yet "
        "saved (JupyterLab saves every 2 min) are lost.",
    )

    @field_validator("idle_stop")
    @classmethod
    def _idle_stop_long_enough(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < MIN_IDLE_STOP:
            raise ValueError(f"must be at least {int(MIN_IDLE_STOP.total_seconds())}s: "
                             "Jupyter's activity is looked at about every 30 s")
        return value

    def job_fingerprint(self) -> str:
        """A digest of everything that shapes the job; a change means a new job."""
        shaping = self.model_dump_json(include={"cluster", "resources", "environment", "jupyter"})
        return hashlib.sha256(shaping.encode()).hexdigest()[:16]


def _field_names(model: type[BaseModel]) -> set[str]:
    names = set(model.model_fields)
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names |= _field_names(field.annotation)
    return names


_FIELD_NAMES = sorted(_field_names(SessionSpec))


def _names_a_field(key: str) -> bool:
    """Whether an error message may quote this key: a field's name, or a typo of one.

    Other keys are not quoted: a file that is not a session file (a credentials file saved
    as .yaml, a symlink to a secret) may have its secrets in keys, as /etc/shadow does.
    """
    return key in _FIELD_NAMES or bool(difflib.get_close_matches(key, _FIELD_NAMES, 1, 0.75))


@dataclass(frozen=True)
class InvalidSpec:
    """A session file that does not validate; `reason` names the field, on one line.
    `cluster` is the file's cluster when it is valid on its own but not among the others."""

    reason: str
    cluster: str | None = None


Spec = SessionSpec | InvalidSpec


def session_name(path: Path) -> str | None:
    """The session name of a file in the sessions directory, or None if it is not one.

    This is the one rule of which files are sessions; the daemon, `validate` and `status`
    all ask it.
    """
    if path.suffix not in SUFFIXES or path.name.startswith("."):
        return None
    return path.stem


def not_a_session(path: Path) -> str | None:
    """Why the daemon passes over this file, or None when it is a session file or one that
    is expected to lie around unread (hidden files, editor backups)."""
    if session_name(path) is not None or path.name.startswith(".") or path.name.endswith("~"):
        return None
    if path.suffix.lower() in SUFFIXES:
        return f"not a session file: the name must end in {' or '.join(SUFFIXES)} (lower case)"
    return f"not a session file: only NAME{' and NAME'.join(SUFFIXES)} files are sessions"


class _Loader(yaml.SafeLoader):
    """YAML without 1.1's base-60 numbers (so `time: 02:00:00` stays a string), with at most
    MAX_DEPTH levels of nesting and without aliases (a few of them can stand for billions
    of values)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, TokenClass: type[yaml.Token]) -> None:
        # Before the composer sees them: the scanner's work grows with the square of the
        # number of open brackets (2,000 took a second, 64 KiB of them minutes).
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        mark: yaml.Mark = event.start_mark  # type: ignore[assignment]
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not supported in session files", mark)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _SEXAGESIMAL_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern in (
    ("tag:yaml.org,2002:int", r"^[-+]?(?:0|[1-9][0-9_]*)$"),
    ("tag:yaml.org,2002:float", r"^[-+]?(?:[0-9][0-9_]*)?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$"),
):
    _Loader.add_implicit_resolver(_tag, re.compile(_pattern), list("-+0123456789."))

# PyYAML quotes pieces of the file in its messages ("found undefined tag 'x'"). The file may
# be a secret saved or linked here by mistake, so only token names ('<block end>') and
# single characters ('\t') are kept.
_QUOTED = re.compile(r"'([^']*)'")


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without the snippet of the file that PyYAML adds."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"not valid YAML: character #x{exc.character:04x} is not allowed " \
            f"(at character {exc.position})"
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = _QUOTED.sub(_unquote, exc.problem or exc.context or "syntax error")
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return f"not valid YAML: {problem}{where}"
    return "not valid YAML"


def _unquote(quoted: re.Match[str]) -> str:
    kept = quoted[1].startswith("<") or len(quoted[1]) <= 2
    return quoted[0] if kept else "'…'"


@functools.lru_cache(maxsize=1024)
def parse_session(name: str, text: str) -> Spec:
    """Validate the text of one session file.

    Memoized (the results are immutable): the daemon re-reads every file on each pass over
    each session, and parsing them all again made an idle daemon with 32 sessions use ~4 %
    of a core instead of ~0.6 % (docs/benchmarks.md, figure 6).
    """
    if not re.fullmatch(NAME_PATTERN, name):
        return InvalidSpec(
            f"file name: {name!r} is not a session name (letters, digits, _ . -; at most 64)"
        )
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        return InvalidSpec(_describe_yaml_error(exc))
    if data is None:
        return InvalidSpec("the file is empty")
    if not isinstance(data, dict):
        return InvalidSpec("the file must be a mapping of keys to values")
    try:
        return SessionSpec.model_validate(data)
    except ValidationError as exc:
        return InvalidSpec(describe_validation_error(exc, shown=_names_a_field))


def session_files(directory: Path) -> list[Path]:
    """The session files in a directory (the first of `x.yaml` and `x.yml` wins).

    Whatever has a session file's name is listed, FIFOs and devices included, so that
    `check_files` reports it instead of it being skipped without a word.
    """
    files: dict[str, Path] = {}
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            name = session_name(path)
            if name is not None and name not in files:
                files[name] = path
    return list(files.values())


Refusal = Callable[["SessionSpec"], str | None]


def read_session_file(path: Path) -> str | InvalidSpec:
    """The text of a session file, or why it is not read (see `trust.read_own_file`)."""
    try:
        data = read_own_file(path, MAX_FILE_BYTES)
    except Untrusted as exc:
        return InvalidSpec(str(exc))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InvalidSpec(f"not UTF-8 text (byte {exc.start + 1} of the file)")


def ignored_files(directory: Path) -> dict[Path, str]:
    """The files in a directory that the daemon passes over, with the reason for each."""
    ignored: dict[Path, str] = {}
    if not directory.is_dir():
        return ignored
    taken = {path.stem: path for path in session_files(directory)}
    for path in sorted(directory.iterdir()):
        name = session_name(path)
        if name is None and path.is_file() and (reason := not_a_session(path)):
            ignored[path] = reason
        elif name is not None and name in taken and taken[name] != path:
            ignored[path] = f"not read: {taken[name].name} already defines session {name!r}"
    return ignored


def check_files(
    paths: Iterable[Path],
    clusters: Iterable[str],
    port_holders: Mapping[int, str] | None = None,
    refuse: Refusal | None = None,
    *,
    clusters_from: str | None = None,
) -> dict[Path, Spec]:
    """Validate session files, including what one file cannot check alone.

    `port_holders` maps ports to the sessions that already serve them, so that a new file
    on a taken port is the one marked invalid, never the running session. `refuse` says
    why a valid file asks its cluster for something it cannot give (`kinds.refusal`).
    `clusters_from` says where the clusters come from (`Settings.describe_clusters`), for
    the message about an unknown cluster.
    """
    known = set(clusters)
    specs: dict[Path, Spec] = {}
    for path in paths:
        text = read_session_file(path)
        if isinstance(text, InvalidSpec):
            specs[path] = text
            continue
        spec = parse_session(session_name(path) or path.stem, text)
        if isinstance(spec, SessionSpec) and spec.cluster not in known:
            where = clusters_from or f"known: {', '.join(sorted(known)) or 'none'}"
            spec = InvalidSpec(f"cluster: unknown cluster {spec.cluster!r} ({where}); "
                               "add it under `clusters:` in the config")
        elif isinstance(spec, SessionSpec) and refuse and (why := refuse(spec)):
            spec = InvalidSpec(why, spec.cluster)
        specs[path] = spec
    return _reject_shared_ports(specs, port_holders or {})


def load_sessions(
    directory: Path,
    clusters: Iterable[str],
    port_holders: Mapping[int, str] | None = None,
    refuse: Refusal | None = None,
    *,
    clusters_from: str | None = None,
) -> dict[str, Spec]:
    """Every session in `directory` by name, validated together.

    In a directory that others could write to, every file is invalid: any of them may have
    been put there by someone else.
    """
    files = session_files(directory)
    try:
        check_directory(directory)
    except Untrusted as exc:
        return {path.stem: InvalidSpec(f"sessions_dir: {exc}") for path in files}
    checked = check_files(files, clusters, port_holders, refuse, clusters_from=clusters_from)
    return {path.stem: spec for path, spec in checked.items()}


def _reject_shared_ports(
    specs: dict[Path, Spec], holders: Mapping[int, str]
) -> dict[Path, Spec]:
    valid = {path.stem: (path, spec) for path, spec in specs.items()
             if isinstance(spec, SessionSpec)}
    # A holder keeps its port while its file asks for it, and while its file is invalid,
    # even if only because it asks for a port that another session holds: an invalid file
    # changes nothing that runs. One kept port can make another file invalid: repeat.
    keeps = {path.stem for path, spec in specs.items() if isinstance(spec, InvalidSpec)}
    owner: dict[int, str] = {}
    while True:
        owner = {port: holder for port, holder in holders.items()
                 if holder in keeps or (holder in valid and valid[holder][1].local_port == port)}
        blocked = {name for name, (_, spec) in valid.items()
                   if owner.get(spec.local_port, name) != name} - keeps
        if not blocked:
            break
        keeps |= blocked
    for name, (path, spec) in valid.items():
        first = owner.setdefault(spec.local_port, name)
        if first != name:
            specs[path] = InvalidSpec(
                f"local_port: {spec.local_port} is already used by session {first!r}",
                spec.cluster,
            )
    return specs
