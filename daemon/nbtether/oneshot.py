"""One-shot connections for commands that look at the cluster (`logs`, `check`)."""

from __future__ import annotations

from nbtether.backends import Backend
from nbtether.backends.batch import BatchBackend
from nbtether.backends.kinds import make_backend
from nbtether.config import Settings
from nbtether.state import Record, StateStore

CONNECT_TIMEOUT = 30.0


async def connect(config: Settings, cluster: str) -> Backend:
    """A started backend for one cluster, connected (batch schedulers) or ready (local)."""
    store = StateStore(config.state_dir)
    backend = make_backend(cluster, config.clusters[cluster], store.instance_id(), store.root,
                           lambda _: None)
    if not isinstance(backend, BatchBackend):
        return backend
    backend.link.start()
    if not await backend.link.wait_up(CONNECT_TIMEOUT):
        await backend.stop()
        raise ConnectionError(str(backend.link.error))
    return backend


async def print_output(config: Settings, record: Record, follow: bool) -> int:
    """Print a job's output; returns the exit code."""
    assert record.job_id is not None
    try:
        backend = await connect(config, record.cluster)
    except ConnectionError as exc:
        print(f"cannot reach {record.cluster}: {exc}")
        return 1
    try:
        async for line in backend.output(record.name, record.job_id, follow):
            print(line, flush=True)
    finally:
        await backend.stop()
    return 0
