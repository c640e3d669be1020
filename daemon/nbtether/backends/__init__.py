"""Where notebooks run: the `Backend` protocol between the reconciler and each kind of cluster.

`slurm` (SLURM over SSH, its text in `slurm_text`) and `local` (processes on this machine)
implement it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Protocol

from nbtether.errors import NbtetherError
from nbtether.jobs import Endpoint, JobInfo
from nbtether.openssh import Forward, OnEnd
from nbtether.spec import SessionSpec

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Backend(Protocol):
    """Where one cluster's jobs run. Reads come from a cache; writes are remote calls."""

    name: str

    def start(self) -> None:
        """Connect and begin watching, in the background."""

    async def stop(self) -> None:
        """Disconnect; jobs keep running."""

    def problem(self) -> NbtetherError | None:
        """Why the cluster cannot be observed right now, or None."""

    async def job(self, job_id: str, submitted_at: datetime | None) -> JobInfo | None:
        """A job's state: `UNKNOWN` when it cannot be told, None when SLURM forgot it."""

    def reconnect(self) -> None:
        """Log in again now, without waiting out the pause after a refused login."""

    def look_soon(self, delay: float = 0.0) -> None:
        """Something looks wrong (e.g. the notebook stopped answering): refresh soon."""

    def endpoint(self, job_id: str) -> Endpoint | None:
        """Where the job's notebook accepts connections, once the job announced it."""

    def active_jobs(self, session: str) -> list[JobInfo]:
        """This daemon's jobs for a session that have not ended (for adoption after a crash)."""

    def unconfirmed(self, session: str) -> bool:
        """A submission's answer was lost and no look since could show the job it made."""

    async def submit(self, session: str, spec: SessionSpec, token: str) -> str:
        """Start a job for the session; returns its id."""

    async def cancel(self, job_ids: list[str]) -> None:
        """Cancel jobs; cancelling a finished job is not an error."""

    async def release(self, session: str) -> None:
        """Remove what a deleted session left on the cluster (its token file)."""

    async def open_connection(self, host: str, port: int) -> Streams:
        """A byte stream to host:port as seen from the cluster."""

    def carry(self, client: socket.socket, host: str, port: int,
              on_end: OnEnd) -> Forward | None:
        """Hand a local connection to OpenSSH, to host:port as seen from the cluster; None
        when nothing outside the daemon can carry it now."""

    def output(self, session: str, job_id: str, follow: bool) -> AsyncIterator[str]:
        """The job's output (Jupyter's log), line by line."""
