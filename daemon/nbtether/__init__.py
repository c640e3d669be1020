"""nbtether: keep Jupyter notebooks running as SLURM jobs, reachable at one local URL."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nbtether")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
