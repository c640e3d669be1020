"""The Grid Engine backend: qsub, qstat, qacct and qdel over SSH (text in `sge_text`)."""

from __future__ import annotations

from dataclasses import replace

import structlog

from nbtether.backends import sge_text
from nbtether.backends.batch import BatchBackend, Scheduler
from nbtether.errors import ClusterUnreachable
from nbtether.jobs import JobInfo

log = structlog.get_logger(__name__)


class SgeBackend(BatchBackend):
    """One Grid Engine cluster reached over SSH."""

    scheduler: Scheduler = sge_text

    async def _observed(self, jobs: dict[str, JobInfo]) -> dict[str, JobInfo]:
        """A job in an error state (`Eqw`) never runs without a person: keep qstat's
        reason as its end and delete it, so that the restart policy decides what follows."""
        for job_id, job in jobs.items():
            if job.base_state != "FAILED":
                continue
            if job_id in self._finished:
                jobs[job_id] = self._finished[job_id]
                continue
            command = f"{sge_text.error_command(job_id)}; {sge_text.cancel_command([job_id])}"
            try:
                result = await self.link.run(command)
            except ClusterUnreachable:
                continue
            self.rpc_count += 1
            reason = sge_text.parse_error_reason(str(result.stdout or ""))
            ended = replace(job, state=f"FAILED ({job.reason}: {reason})", reason=reason)
            self._finished[job_id] = jobs[job_id] = ended
            log.warning("job in error state deleted", cluster=self.name, job_id=job_id,
                        reason=reason)
        return jobs
