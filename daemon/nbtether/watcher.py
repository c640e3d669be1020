"""Watch the sessions directory; every change only names the session to look at again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import watchfiles

from nbtether.spec import session_name


async def watch_sessions(
    directory: Path, on_change: Callable[[str], None], stop: asyncio.Event
) -> None:
    """Call `on_change(name)` for each session file that appears, changes or disappears.

    Editors save by writing a temporary file and renaming it; both ends of the rename name
    the same session, and the reconciler reads the directory afresh, so nothing is lost.
    """
    directory.mkdir(parents=True, exist_ok=True)
    async for changes in watchfiles.awatch(directory, stop_event=stop, recursive=False,
                                          debounce=50, step=20):
        for _, path in changes:
            name = session_name(Path(path))
            if name is not None:
                on_change(name)
