"""The backend for each `kind` of cluster in the config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nbtether.backends import Backend
from nbtether.backends.batch import BatchBackend
from nbtether.backends.local import LocalBackend
from nbtether.backends.slurm import SlurmBackend
from nbtether.config import ClusterConfig

BATCH: dict[str, type[BatchBackend]] = {"slurm": SlurmBackend}


def make_backend(
    name: str,
    config: ClusterConfig,
    instance: str,
    state_root: Path,
    on_change: Callable[[set[str] | None], None],
) -> Backend:
    """The backend of one configured cluster, not yet started."""
    if config.kind == "local":
        return LocalBackend(name, state_root / "local", on_change)
    return BATCH[config.kind](name, config, instance, on_change)
