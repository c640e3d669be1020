"""The SLURM backend: sbatch, squeue, sacct and scancel over SSH (text in `slurm_text`)."""

from __future__ import annotations

from nbtether.backends import slurm_text
from nbtether.backends.batch import BatchBackend, Scheduler


class SlurmBackend(BatchBackend):
    """One SLURM cluster reached over SSH."""

    scheduler: Scheduler = slurm_text
