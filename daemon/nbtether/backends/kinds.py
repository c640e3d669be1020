"""The backend for each `kind` of cluster in the config."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from nbtether.backends import Backend, sge_text
from nbtether.backends.batch import BatchBackend
from nbtether.backends.local import LocalBackend
from nbtether.backends.sge import SgeBackend
from nbtether.backends.slurm import SlurmBackend
from nbtether.clock import Clock, system_clock
from nbtether.config import ClusterConfig
from nbtether.spec import Refusal, SessionSpec

BATCH: dict[str, type[BatchBackend]] = {"slurm": SlurmBackend, "sge": SgeBackend}


def make_backend(
    name: str,
    config: ClusterConfig,
    instance: str,
    state_root: Path,
    on_change: Callable[[set[str] | None], None],
    clock: Clock = system_clock,
    tunnels: bool = False,
) -> Backend:
    """The backend of one configured cluster, not yet started; `tunnels`: the daemon's,
    whose connections may be carried by an OpenSSH master (one per daemon and cluster)."""
    if config.kind == "local":
        return LocalBackend(name, state_root / "local", on_change, clock)
    return BATCH[config.kind](name, config, instance, on_change, clock=clock, tunnels=tunnels)


def refusal(clusters: Mapping[str, ClusterConfig]) -> Refusal:
    """Why a session file asks its cluster's scheduler for what it has no word for."""

    def refuse(spec: SessionSpec) -> str | None:
        cluster = clusters.get(spec.cluster)
        if cluster is not None and cluster.kind == "sge":
            return sge_text.unsupported(spec, cluster)
        return None

    return refuse
