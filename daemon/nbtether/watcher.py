"""Watch the sessions directory and the config file; a change only says what to look at again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
import watchfiles

from nbtether.spec import ignored_files, session_name

log = structlog.get_logger(__name__)

# watchfiles' thread sleeps `step` ms, then takes the GIL to look for changes, whether or not
# there are any: each wake-up costs CPU. A change is reported one to two steps after it.
SESSIONS_STEP = 100
CONFIG_STEP = 500


async def watch_sessions(
    directory: Path, on_change: Callable[[str], None], stop: asyncio.Event
) -> None:
    """Call `on_change(name)` for each session file that appears, changes or disappears.

    Editors save by writing a temporary file and renaming it; both ends of the rename name
    the same session, and the reconciler reads the directory afresh, so nothing is lost.
    A file that is not a session (`notes.txt`, `x.YAML`) is logged once, not silently passed
    over: `nbtether validate` reports the same files.
    """
    directory.mkdir(parents=True, exist_ok=True)
    told: set[Path] = set()

    def tell_ignored() -> None:
        ignored = ignored_files(directory)
        for path in sorted(ignored.keys() - told):
            log.warning("ignoring a file in the sessions directory", file=str(path),
                        reason=ignored[path])
        told.intersection_update(ignored)
        told.update(ignored)

    tell_ignored()
    async for changes in watchfiles.awatch(directory, stop_event=stop, recursive=False,
                                          debounce=SESSIONS_STEP, step=SESSIONS_STEP):
        for _, path in changes:
            name = session_name(Path(path))
            if name is not None:
                on_change(name)
        tell_ignored()


async def watch_config(
    file: Path, on_change: Callable[[], Awaitable[None]], stop: asyncio.Event
) -> None:
    """Await `on_change()` after each change to the config file, including its creation.

    The file's directory is watched, not the file: editors replace it by renaming, and the
    default file may not exist yet.
    """
    file = file.resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    async for changes in watchfiles.awatch(file.parent, stop_event=stop, recursive=False,
                                          debounce=CONFIG_STEP, step=CONFIG_STEP):
        if any(Path(path).resolve() == file for _, path in changes):
            await on_change()
