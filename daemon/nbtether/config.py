"""The daemon's settings: a YAML file plus `NBTETHER_` environment overrides."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from nbtether.errors import ConfigError

ExpandedPath = Annotated[Path, AfterValidator(lambda p: Path(os.path.expandvars(p)).expanduser())]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
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
    config_file: ClassVar[Path | None] = None

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
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls.config_file))
        return tuple(sources)


def load_settings(path: Path | None = None) -> Settings:
    """Read the config file (explicit, `NBTETHER_CONFIG`, or the default) and the environment.

    A missing default file is fine (all defaults); a missing explicit file is an error.
    """
    explicit = path or (Path(p) if (p := os.environ.get("NBTETHER_CONFIG")) else None)
    file = (explicit or default_config_file()).expanduser()
    if explicit is not None and not file.is_file():
        raise ConfigError(f"config file {file} does not exist")
    Settings.config_file = file if file.is_file() else None
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(f"{file}: {describe_validation_error(exc)}") from exc
    finally:
        Settings.config_file = None


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
