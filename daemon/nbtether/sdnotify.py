"""The systemd notify protocol (sd_notify(3)), spoken directly: READY, WATCHDOG, STATUS."""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    """Sends notify messages to $NOTIFY_SOCKET; does nothing when it is not set."""

    def __init__(self) -> None:
        self._address = os.environ.get("NOTIFY_SOCKET") or None
        if self._address and self._address.startswith("@"):
            self._address = "\0" + self._address[1:]  # an abstract socket

    @property
    def watchdog_interval(self) -> float | None:
        """Half the watchdog timeout in seconds, if systemd asked for pings."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2_000_000

    def send(self, message: str) -> None:
        """Send one message, e.g. "READY=1" or "STATUS=2 sessions ready"."""
        if not self._address:
            return
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
            contextlib.suppress(OSError),  # the service manager went away
        ):
            sock.sendto(message.encode(), self._address)
