"""Desktop notifications when a session's phase changes (`notifications: true` in the config).

`notify-send` on Linux, `osascript` on macOS, run as argv lists (no shell). A notification
says which session, its phase and a short message; it never carries the token: the token
is cut out of the message, and so is anything that looks like `token=…`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import structlog

from nbtether.state import Record

log = structlog.get_logger(__name__)

MAX_MESSAGE = 200
_TOKEN_PARAMETER = re.compile(r"(token=)[^\s&#]+", re.IGNORECASE)
# AppleScript reads the texts from its arguments, so nothing needs quoting for it.
_APPLESCRIPT = ["on run argv", "display notification (item 2 of argv) "
                "with title (item 1 of argv)", "end run"]


def scrub(text: str, token: str | None = None) -> str:
    """`text` without the token: its value and any `token=…` URL parameter are elided."""
    if token:
        text = text.replace(token, "…")
    return _TOKEN_PARAMETER.sub(r"\1…", text)


def worth_telling(before: str, after: str) -> bool:
    """A phase change a person wants to hear about: ready, failed, invalid, a login to give,
    lost readiness, and both ends of a handover (the kernel will stop; it was replaced)."""
    if before == after:
        return False
    if after in ("ready", "handover", "failed", "invalid", "login"):
        return True
    return before in ("ready", "handover") and after in ("pending", "starting")


class DesktopNotifier:
    """Shows phase changes on the desktop; silent when no notifier program is installed."""

    def __init__(self, platform: str = sys.platform) -> None:
        self.platform = platform
        tool = "osascript" if platform == "darwin" else "notify-send"
        self.program = shutil.which(tool)
        self._children: list[subprocess.Popen[bytes]] = []
        if self.program is None:
            log.info("desktop notifications unavailable", missing=tool)

    def argv(self, title: str, body: str, urgent: bool = False) -> list[str]:
        """The command line that shows one notification."""
        assert self.program is not None
        if self.platform == "darwin":
            script = [part for line in _APPLESCRIPT for part in ("-e", line)]
            return [self.program, *script, title, body]
        urgency = "critical" if urgent else "normal"
        return [self.program, "--app-name=nbtether", f"--urgency={urgency}", "--", title, body]

    def phase_changed(self, before: str, record: Record) -> None:
        """The reconciler's hook: tell the user about `record`'s new phase if it matters."""
        if not worth_telling(before, record.phase):
            return
        message = scrub(record.message, record.token)
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 1] + "…"
        title = f"nbtether: {record.name} is {record.phase}"
        if record.phase == "ready" and before == "handover":
            title = f"nbtether: {record.name}: kernel replaced"  # same URL; the message says why
        elif record.phase == "ready" and record.local_port is not None:
            message = f"http://127.0.0.1:{record.local_port}/ (nbtether open {record.name})"
        elif record.phase == "handover":
            title = f"nbtether: {record.name}: kernel stops at the walltime end"
        self.show(title, message, urgent=record.phase in ("failed", "invalid"))

    def show(self, title: str, body: str, urgent: bool = False) -> None:
        """Start the notifier without waiting for it; a failure is logged, never raised."""
        self._reap()
        if self.program is None:
            return
        try:
            child = subprocess.Popen(
                self.argv(title, body, urgent), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
        except OSError as exc:
            log.warning("desktop notification failed", error=str(exc))
            return
        self._children.append(child)

    def _reap(self) -> None:
        self._children = [child for child in self._children if child.poll() is None]

    def close(self, timeout: float = 5.0) -> None:
        """Wait briefly for notifiers still running (at daemon shutdown)."""
        for child in self._children:
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._children.clear()
