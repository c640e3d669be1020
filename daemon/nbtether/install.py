"""How this nbtether was installed, so that install hints name a command that works here."""

from __future__ import annotations

import json
import shlex
import sys
from importlib import metadata
from urllib.parse import unquote, urlparse


def source() -> tuple[str, bool] | None:
    """The local directory nbtether was installed from and whether editably, or None when it
    came from a package index (or cannot be told)."""
    try:
        text = metadata.distribution("nbtether").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    try:
        data = json.loads(text or "")
    except ValueError:
        return None
    url = urlparse(str(data.get("url", "")))
    if url.scheme != "file":
        return None
    return unquote(url.path), bool(data.get("dir_info", {}).get("editable"))


def jupyter_hint() -> str:
    """The command that adds Jupyter (the `local` extra) to the Python that runs nbtether."""
    if "pipx" in sys.prefix.split("/"):
        return "pipx inject nbtether jupyterlab"
    found = source()
    target = f"{found[0]}[local]" if found else "nbtether[local]"
    editable = "-e " if found and found[1] else ""
    return f"{shlex.quote(sys.executable)} -m pip install {editable}{shlex.quote(target)}"
