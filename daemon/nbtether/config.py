"""The daemon's settings: a YAML file plus `NBTETHER_` environment overrides."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from nbtether.errors import ConfigError
from nbtether.yamltext import line_of, yaml_problem

ExpandedPath = Annotated[Path, AfterValidator(lambda p: Path(os.path.expandvars(p)).expanduser())]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
BUILTIN_CLUSTER = "local"  # the cluster there is when no config file exists
# A scheduler's name for a site setting (a parallel environment, a resource): it ends up in
# directives, so nothing that a shell or the scheduler would read as more than a word.
SiteWord = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]


def _xdg(variable: str, fallback: str) -> Path:
    return Path(os.environ.get(variable) or Path.home() / fallback)


def default_config_file() -> Path:
    """Where the config lives unless `--config` or `NBTETHER_CONFIG` say otherwise."""
    return _xdg("XDG_CONFIG_HOME", ".config") / "nbtether" / "config.yaml"


class ClusterConfig(BaseModel):
    """How to reach one cluster: over SSH to its login node, or this machine itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["slurm", "sge", "local"] = Field(
        "slurm",
        description="`slurm` or `sge` (Grid Engine): jobs on a cluster over SSH; "
        "`local`: notebooks here.",
    )
    host: str | None = Field(None, description="Host name or a Host alias from ~/.ssh/config.")
    user: str | None = Field(None, description="Login name (ssh config or local user otherwise).")
    port: int | None = Field(None, ge=1, le=65535, description="SSH port (ssh config or 22).")
    identity_file: ExpandedPath | None = Field(None, description="Private key to log in with.")
    known_hosts: ExpandedPath | None = Field(
        None, description="known_hosts file (default ~/.ssh/known_hosts); always verified."
    )
    proxy_jump: str | None = Field(None, description="Jump host, as in ssh's ProxyJump.")
    agent_path: ExpandedPath | None = Field(
        None,
        description="ssh-agent socket; default $SSH_AUTH_SOCK (often unset under systemd).",
    )
    use_openssh: bool = Field(
        True,
        description="Let the system's OpenSSH client (`ssh -M`) carry the tunnels' bytes when "
        "it can log in without a person and without a jump host; `false` keeps them in the "
        "daemon.",
    )
    poll_interval: float = Field(
        60.0, ge=30.0,
        description="Seconds between squeue (or qstat) calls for all sessions (never closer "
        "than 40).",
    )

    parallel_environment: SiteWord = Field(
        "smp", description="`sge` only: the parallel environment that gives `cpus` slots "
        "on one host."
    )
    memory_resource: SiteWord = Field(
        "h_vmem", description="`sge` only: the resource that `mem` asks for (per slot)."
    )
    gpu_resource: SiteWord | None = Field(
        None, description="`sge` only: the resource that `gpus` asks for, if the site has one."
    )

    @model_validator(mode="after")
    def _batch_needs_a_host(self) -> ClusterConfig:
        if self.kind != "local" and not self.host:
            raise ValueError(f"a cluster of kind {self.kind} needs `host`")
        return self


class Settings(BaseSettings):
    """The daemon config (see docs/reference.md)."""

    model_config = SettingsConfigDict(
        env_prefix="NBTETHER_", env_nested_delimiter="__", extra="forbid"
    )
    file_data: ClassVar[dict[str, Any]] = {}
    _file: Path = PrivateAttr(default_factory=lambda: default_config_file())
    _file_exists: bool = PrivateAttr(default=False)

    sessions_dir: ExpandedPath = Field(
        default_factory=lambda: _xdg("XDG_CONFIG_HOME", ".config") / "nbtether" / "sessions.d",
        description="The watched directory of session files.",
    )
    state_dir: ExpandedPath = Field(
        default_factory=lambda: _xdg("XDG_STATE_HOME", ".local/state") / "nbtether",
        description="Where the daemon keeps its records and status (0700).",
    )
    clusters: dict[Annotated[str, Field(pattern=NAME_PATTERN)], ClusterConfig] = Field(
        default_factory=dict, description="Clusters by the name that session files use."
    )
    notifications: bool = Field(False, description="Desktop notifications (notify-send).")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls, dict(cls.file_data))

    @property
    def file(self) -> Path:
        """The config file these settings were read from (or would be: see `file_exists`)."""
        return self._file

    @property
    def file_exists(self) -> bool:
        """Whether the config file existed; without one, the built-in `local` cluster is there."""
        return self._file_exists

    def describe_clusters(self) -> str:
        """Which clusters there are and where they come from, for messages."""
        names = ", ".join(sorted(self.clusters)) or "none"
        if self.file_exists:
            return f"{self.file} defines: {names}"
        return f"no config file at {self.file}; built in: {names}"


class _FileSource(PydanticBaseSettingsSource):
    """The config file's values, parsed beforehand so that a YAML error names its line."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.data


def config_file(path: Path | None = None) -> tuple[Path, bool]:
    """The config file to read (explicit, `NBTETHER_CONFIG`, or the default) and whether it
    was named explicitly."""
    explicit = path or (Path(p) if (p := os.environ.get("NBTETHER_CONFIG")) else None)
    return (explicit or default_config_file()).expanduser(), explicit is not None


def load_settings(path: Path | None = None) -> Settings:
    """Read the config file and the environment.

    A missing default file means the defaults and the built-in `local` cluster; a missing
    explicit file is an error. Every error names the file and, where it can, the line.
    """
    file, explicit = config_file(path)
    try:
        text = file.read_text(encoding="utf-8") if file.is_file() or explicit else None
    except (OSError, UnicodeDecodeError) as exc:
        missing = isinstance(exc, FileNotFoundError)
        reason = "does not exist" if missing else f"cannot be read: {exc}"
        raise ConfigError(f"{file}: the config file {reason}") from None
    data = _parse(file, text)
    try:
        Settings.file_data = data
        settings = Settings()
    except ValidationError as exc:
        problems = [f"{file}:{_line(text, error['loc'])}: {_where(error['loc'])}: {error['msg']}"
                    for error in exc.errors()]
        raise ConfigError("\n".join(problems)) from None
    finally:
        Settings.file_data = {}
    settings._file, settings._file_exists = file, text is not None
    return settings


def _parse(file: Path, text: str | None) -> dict[str, Any]:
    if text is None:
        return {"clusters": {BUILTIN_CLUSTER: {"kind": "local"}}}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        summary, detail = yaml_problem(exc, str(file))
        raise ConfigError(summary, detail) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}:1: the config must be a mapping of keys to values")
    return data


def _line(text: str | None, location: tuple[str | int, ...]) -> str:
    line = line_of(text, location) if text is not None else None
    return str(line) if line is not None else "(environment)"


def _where(location: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in location) or "(file)"


def describe_validation_error(
    exc: ValidationError, limit: int = 5, shown: Callable[[str], bool] = lambda key: True
) -> str:
    """One clause per problem, `field.path: reason`, for at most `limit` problems.

    Only where and what: never the offending value (pydantic's `input_value`), which may be
    a secret from a file that was not meant to be read, and keys only when `shown(key)`.
    Long keys are shortened, so that a hostile file cannot make a message of megabytes.
    """
    lines = []
    for error in exc.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(_describe_key(part, shown) for part in error["loc"]) or "(file)"
        what = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"{where}: {what}")
    if exc.error_count() > limit:
        lines.append(f"and {exc.error_count() - limit} more problems")
    return "; ".join(lines)


def _describe_key(part: int | str, shown: Callable[[str], bool], width: int = 40) -> str:
    text = str(part)
    if isinstance(part, str) and not shown(part):
        return "<key>"
    return text if len(text) <= width else text[: width - 1] + "…"
