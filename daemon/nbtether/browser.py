"""Opening a notebook in the browser without its token on any command line.

A browser is a program started with the URL as an argument, and every local user can read
a process's arguments (`/proc/*/cmdline`). So, as Jupyter does, the browser is given the path
of a 0600 page in the state directory that sends it on to the URL.
"""

from __future__ import annotations

import html
import json
import webbrowser
from pathlib import Path

from nbtether.state import write_private

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={attr}">
<title>nbtether</title></head>
<body><p><a href="{attr}">Open the notebook</a></p>
<script>window.location.href = {js};</script></body></html>
"""


def open_url(url: str, pages: Path, name: str) -> bool:
    """Open `url` in the browser by way of a private redirect page; False when no browser
    can be started here (nothing was tried then)."""
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    pages.mkdir(mode=0o700, parents=True, exist_ok=True)
    pages.chmod(0o700)
    page = pages / f"{name}.html"
    write_private(page, PAGE.format(attr=html.escape(url), js=json.dumps(url)))
    return browser.open(page.as_uri())
