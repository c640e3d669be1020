"""`python -m nbtether` runs the command line."""

from nbtether.cli import app

app(prog_name="nbtether")
