"""One narrow change to asyncssh's send path: no SSH_MSG_IGNORE before packets when no
CBC cipher is in use.

asyncssh 2.24.1 (`SSHConnection.send_packet`) sends an empty `SSH_MSG_IGNORE` before every
packet once encryption is on. That is the RFC 4251 §9.3.1 countermeasure against the
chosen-plaintext attack on CBC mode's predictable IV; the ciphers nbtether offers
(`remote.CIPHERS`: AES-GCM, chacha20-poly1305, AES-CTR) are not CBC and need no such
packet. Each one doubles the packets and `send()` calls of every tunnelled request.

The change is applied only to the exact asyncssh version and `send_packet` source it was
written against (`tests/unit/test_sshpatch.py` fails when either changes); anything else
keeps asyncssh's own behaviour. docs/architecture.md describes the upstream patch.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import asyncssh
from asyncssh.connection import SSHClientConnection, SSHConnection
from asyncssh.constants import MSG_IGNORE
from asyncssh.packet import String

PINNED_VERSION = "2.24.1"
PINNED_SOURCE_SHA256 = "fb9da7bec6dd395a2f379f8a0f4dbfc5f194ff80e1ed8630d9a6dbf291359406"
_EMPTY = String(b"")
_stock_send_packet = SSHConnection.send_packet


def source_digest() -> str:
    """The sha256 of the installed asyncssh's `SSHConnection.send_packet` source."""
    return hashlib.sha256(inspect.getsource(_stock_send_packet).encode()).hexdigest()


def applicable() -> bool:
    """True when the installed asyncssh is the one this change was written for."""
    return asyncssh.__version__ == PINNED_VERSION and source_digest() == PINNED_SOURCE_SHA256


def _send_packet(self: SSHConnection, pkttype: int, *args: bytes, handler: Any = None) -> None:
    # In 2.24.1 the only empty IGNORE that asyncssh sends is the one send_packet inserts.
    if pkttype == MSG_IGNORE and args == (_EMPTY,) and b"-cbc" not in self._enc_alg_cs:
        return
    _stock_send_packet(self, pkttype, *args, handler=handler)


def apply() -> bool:
    """Install the change on client connections if applicable; True if installed."""
    if not applicable():
        return False
    SSHClientConnection.send_packet = _send_packet  # type: ignore[method-assign]
    return True
