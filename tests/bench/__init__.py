"""Benchmarks of nbtether on the mini-cluster: `python -m tests.bench` (as root).

Not pytest tests: no module here is named `test_*`, so pytest never collects them.
Every figure is a ratio or a difference of two things measured in the same run; the
results go to a table on stdout and to docs/benchmarks.md with plots in docs/.
"""
