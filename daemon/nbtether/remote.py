"""One supervised SSH connection per cluster: commands, tunnels' channels, and a job watcher.

asyncssh never reconnects by itself, so `SshLink` does: it keeps one authenticated
connection (keepalives on), reconnects with capped, jittered backoff after a transient loss,
and stops retrying in a loop after an authentication or host-key failure.

A login node that asks for a password or one-time code gets answers only from a person
(`nbtether login`, relayed by `control`): the daemon declines such prompts by itself, so it
never sends a guess, and after a failed or needed login it waits for the next person.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shlex
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import asyncssh
import structlog

from nbtether import openssh, sshpatch
from nbtether.config import ClusterConfig
from nbtether.errors import (
    AuthError,
    ClusterUnreachable,
    ConfigError,
    HostKeyError,
    LoginRequired,
    NbtetherError,
    PermanentError,
)

log = structlog.get_logger(__name__)

sshpatch.apply()  # no SSH_MSG_IGNORE before each packet: half the packets per request

# AES-GCM first: measured ~1.2x the throughput of OpenSSH's default cipher on this kind
# of machine; the rest of asyncssh's defaults follow as fallbacks.
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes128-ctr", "aes192-ctr", "aes256-ctr"]
KEEPALIVE_INTERVAL = 10.0
KEEPALIVE_COUNT = 3
# A connection that took a person's login is kept through up to 3 minutes of silence (a
# suspended laptop, a Wi-Fi hiccup): TCP survives that when the address stays the same.
LOGIN_KEEPALIVE_COUNT = 18
LOGIN_TIMEOUT = 300.0  # a person reads, types, or accepts a push; sshd's LoginGraceTime ends it
CONNECT_TIMEOUT = 20.0
RECONNECT_MAX_DELAY = 5.0  # short, so a returning login node is used within seconds
PERMANENT_RETRY_DELAY = 600.0  # an auth or host-key failure is retried rarely, never in a loop
MAX_EXEC_CHANNELS = 5  # sshd's MaxSessions defaults to 10 per connection
# What a jump host shares with the login node's connection; its user, port and keys come
# from the jump host's own entry (ssh_config), as with OpenSSH.
_HOP_OPTIONS = ("known_hosts", "agent_forwarding", "agent_path", "connect_timeout",
                "encryption_algs")


def known_hosts_file(config: ClusterConfig) -> Path:
    """The known_hosts file every connection to the cluster is checked against."""
    return config.known_hosts or Path("~/.ssh/known_hosts").expanduser()


def connect_options(config: ClusterConfig) -> dict[str, Any]:
    """asyncssh.connect() arguments for a cluster; unset ones come from ~/.ssh/config."""
    options: dict[str, Any] = {
        "keepalive_interval": KEEPALIVE_INTERVAL,
        "keepalive_count_max": KEEPALIVE_COUNT,
        "connect_timeout": CONNECT_TIMEOUT,
        "encryption_algs": CIPHERS,
        "agent_forwarding": False,  # the cluster never gets to use the laptop's keys
    }
    if config.user:
        options["username"] = config.user
    if config.port:
        options["port"] = config.port
    if config.identity_file:
        if not config.identity_file.is_file():
            raise ConfigError(f"identity_file {config.identity_file} does not exist")
        options["client_keys"] = [str(config.identity_file)]
    # Explicit, so that an ssh_config `UserKnownHostsFile none` cannot turn checking off.
    known_hosts = known_hosts_file(config)
    if not known_hosts.is_file():
        raise HostKeyError(f"known_hosts {known_hosts} does not exist; log in once with ssh "
                           "and check the host key fingerprint, or set known_hosts")
    options["known_hosts"] = str(known_hosts)
    if config.agent_path:
        options["agent_path"] = str(config.agent_path)
    return options


async def jump_hosts(config: ClusterConfig) -> list[str]:
    """The jump hosts on the way to the login node, in order (`[user@]host[:port]` each).

    `proxy_jump` if set, else ssh_config's ProxyJump for `host`. The daemon connects to
    each itself, so that each is verified with the cluster's known_hosts; a jump host's own
    ProxyJump in ssh_config is not followed (list the whole chain, comma-separated).
    """
    jumps = config.proxy_jump
    if jumps is None:
        options = await asyncssh.SSHClientConnectionOptions.construct(
            config=(), host=config.host or "", known_hosts=None, client_keys=None,
            agent_path=None)
        jumps = options.tunnel if isinstance(options.tunnel, str) else None
    if jumps is None or jumps.lower() == "none":
        return []
    return [hop.strip() for hop in jumps.split(",") if hop.strip()]


async def open_jumps(
    config: ClusterConfig, options: dict[str, Any]
) -> asyncssh.SSHClientConnection | None:
    """Connect through the jump hosts, each verified with the cluster's known_hosts; the
    last one's connection (None without jump hosts). Errors name the hop that failed."""
    try:
        hops = await jump_hosts(config)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read ProxyJump from ~/.ssh/config: {exc}") from exc
    tunnel: asyncssh.SSHClientConnection | None = None
    for hop in hops:
        user, _, address = hop.rpartition("@")
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
        hop_options = {key: options[key] for key in _HOP_OPTIONS if key in options}
        try:
            with _closed_on_failure(tunnel):
                conn = await asyncssh.connect(host, int(port) if port else (),
                                              username=user or (), tunnel=tunnel, **hop_options)
        except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
            raise classify(exc, address) from exc
        conn.set_tunnel(tunnel)  # closing a hop closes the hops before it
        tunnel = conn
    return tunnel


@contextlib.contextmanager
def _closed_on_failure(tunnel: asyncssh.SSHClientConnection | None) -> Iterator[None]:
    """Close the jump hosts' connection if what goes through it fails."""
    try:
        yield
    except BaseException:
        if tunnel is not None:
            tunnel.close()
        raise


def classify(exc: BaseException, host: str) -> NbtetherError:
    """Map a connection failure into nbtether's error tree; `host` is the one that failed."""
    if isinstance(exc, NbtetherError):
        return exc
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return HostKeyError(
            f"host key of {host} is unknown or has changed ({exc.reason}); "
            f"check its fingerprint and add it to known_hosts",
            host=host,
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return AuthError(f"{host} refused our credentials: {exc.reason}")
    if isinstance(exc, asyncssh.KeyImportError | asyncssh.KeyEncryptionError):
        return ConfigError(f"cannot use the private key: {exc}")
    if isinstance(exc, asyncssh.Error):
        return ClusterUnreachable(f"{host}: {exc.reason}")
    return ClusterUnreachable(f"{host}: {exc or type(exc).__name__}")


Prompt = tuple[str, bool]  # the server's text, and whether the answer may be shown as typed


class Person(Protocol):
    """Someone at `nbtether login` who answers the login node's prompts."""

    async def answer(
        self, name: str, instructions: str, prompts: Sequence[Prompt]
    ) -> list[str] | None:
        """The answers to one challenge, one per prompt; None if the person cancelled."""


class _Login(asyncssh.SSHClient):
    """Hands keyboard-interactive and password prompts to a person: one try of each method.

    Without a person every such prompt is declined, so the server never gets an answer
    that a person did not give, and nothing counts against the account.
    """

    def __init__(self, person: Person | None, password_prompt: str) -> None:
        self.person = person
        self.password_prompt = password_prompt
        self.needs_person = False  # the server asked for something only a person knows
        self.answered = False
        self.cancelled = False
        self._tried: set[str] = set()

    def _may_try(self, method: str) -> bool:
        self.needs_person = True
        if self.person is None or self.cancelled or method in self._tried:
            return False  # a second round would be a retry the person did not ask for
        self._tried.add(method)
        return True

    def kbdint_auth_requested(self) -> str | None:
        return "" if self._may_try("keyboard-interactive") else None

    async def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[Prompt]
    ) -> list[str] | None:
        if self.person is None or self.cancelled:
            return None
        answers = await self.person.answer(name, instructions, prompts)
        self.cancelled = answers is None
        self.answered = self.answered or bool(answers)
        return answers

    async def password_auth_requested(self) -> str | None:
        if not self._may_try("password") or self.person is None:
            return None
        answers = await self.person.answer("", "", [(self.password_prompt, False)])
        if not answers:
            self.cancelled = True
            return None
        self.answered = True
        return answers[0]


class SshLink:
    """A supervised connection to one login node."""

    def __init__(
        self,
        name: str,
        config: ClusterConfig,
        on_up: Callable[[asyncssh.SSHClientConnection], Awaitable[None]],
        on_change: Callable[[], None],
        carrier_key: str | None = None,
    ) -> None:
        """`carrier_key` (unique per daemon and cluster): run an OpenSSH master to carry
        the tunnels' bytes whenever the login needs no person (`openssh`)."""
        self.name = name
        self.config = config
        self._carrier_key = carrier_key
        self._master: openssh.Master | None = None
        self.error: NbtetherError | None = ClusterUnreachable("not connected yet")
        self._on_up = on_up
        self._on_change = on_change
        self._conn: asyncssh.SSHClientConnection | None = None
        self._up = asyncio.Event()
        self._exec_slots = asyncio.Semaphore(MAX_EXEC_CHANNELS)
        self._task: asyncio.Task[None] | None = None
        self._retry_now = asyncio.Event()
        self._person: Person | None = None  # at `nbtether login`, waiting for the next attempt
        self._login_result: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Begin connecting (and keep the connection) in the background."""
        self._task = asyncio.create_task(self._supervise(), name=f"ssh-{self.name}")

    async def stop(self) -> None:
        """Close the connection for good."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn:
            self._conn.close()
            await self._conn.wait_closed()

    def retry(self) -> None:
        """Skip a long wait after a permanent error (e.g. the config was fixed)."""
        self._retry_now.set()

    @property
    def connected(self) -> bool:
        """True while an authenticated connection is up."""
        return self._conn is not None

    async def login(self, person: Person) -> None:
        """Connect now with `person` answering the server's prompts; raises why it failed.

        Returns at once when the connection is up already.
        """
        if self._conn is not None:
            return
        if self._person is not None:
            raise LoginRequired(f"another `nbtether login {self.name}` is in progress")
        self._person = person
        self._login_result = asyncio.get_running_loop().create_future()
        self._retry_now.set()
        try:
            await self._login_result
        finally:
            self._person = self._login_result = None

    async def _connect(self, person: Person | None) -> tuple[asyncssh.SSHClientConnection, bool]:
        """The connection, and whether OpenSSH could log in the same way alone (no person
        answered a prompt, no jump host)."""
        host = self.config.host or ""
        options = connect_options(self.config)
        if person is not None:
            options.update(connect_timeout=LOGIN_TIMEOUT, login_timeout=LOGIN_TIMEOUT)
        who = f"{self.config.user}@{host}" if self.config.user else host
        client = _Login(person, f"{who}'s password: ")
        tunnel = await open_jumps(self.config, options)
        try:
            with _closed_on_failure(tunnel):
                conn, _ = await asyncssh.create_connection(lambda: client, host, tunnel=tunnel,
                                                           **options)
        except asyncssh.PermissionDenied as exc:
            if not client.needs_person:
                raise classify(exc, host) from exc
            command = f"nbtether login {self.name}"
            if client.cancelled:
                raise LoginRequired(f"login to {host} cancelled; run `{command}`") from exc
            if client.answered:
                raise LoginRequired(f"{host} refused the login ({exc.reason}); "
                                    f"run `{command}` to try again") from exc
            raise LoginRequired(f"{host} asks for a password or one-time code; "
                                f"run `{command}`") from exc
        except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
            raise classify(exc, host) from exc
        except Exception as exc:  # a bug below us must not end the supervision for good
            log.exception("ssh connect failed unexpectedly", cluster=self.name)
            raise ClusterUnreachable(f"{host}: {exc!r}") from exc
        conn.set_tunnel(tunnel)  # closing the login node's connection closes the hops too
        if client.answered:
            conn.set_keepalive(KEEPALIVE_INTERVAL, LOGIN_KEEPALIVE_COUNT)
        return conn, tunnel is None and not client.needs_person

    def _settle(self, person: Person | None, error: NbtetherError | None) -> None:
        """Tell a waiting `login()` that the link is up, or why the attempt it answered failed.

        A failed attempt that started before the person came is not theirs: the next is.
        """
        result = self._login_result
        if result is None or result.done():
            return
        if error is None:
            result.set_result(None)
        elif person is not None and person is self._person:
            result.set_exception(error)

    async def _supervise(self) -> None:
        delay = 1.0
        while True:
            person = self._person
            self._retry_now.clear()  # a login() during the attempt keeps its wake-up
            try:
                conn, alone = await self._connect(person)
            except NbtetherError as exc:
                self._settle(person, exc)
                self.error = exc
                self._on_change()
                if isinstance(exc, LoginRequired):
                    # Nothing retries a login by itself: only the next person does.
                    log.warning("ssh login needs a person", cluster=self.name, error=str(exc))
                    await self._retry_now.wait()
                    continue
                permanent = isinstance(exc, PermanentError)
                wait = PERMANENT_RETRY_DELAY if permanent else delay * random.uniform(0.5, 1.0)  # noqa: S311
                log.warning("ssh connect failed", cluster=self.name, error=str(exc), retry_in=wait)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._retry_now.wait(), wait)
                continue
            delay = 1.0
            self._settle(person, None)
            self._conn, self.error = conn, None
            self._up.set()
            log.info("ssh connected", cluster=self.name)
            carrier = self._carry_with_openssh() if alone else None
            try:
                try:
                    await self._on_up(conn)
                except Exception:  # a bug in a handler must not end the supervision
                    log.exception("connection handler failed", cluster=self.name)
                self._on_change()
                await conn.wait_closed()
            finally:
                self._conn = None
                self._up.clear()
                if carrier is not None:
                    carrier.cancel()
                    await asyncio.gather(carrier, return_exceptions=True)
                self._master = None
            self.error = ClusterUnreachable(f"connection to {self.config.host} lost")
            log.warning("ssh connection lost", cluster=self.name)
            self._on_change()

    def _carry_with_openssh(self) -> asyncio.Task[None] | None:
        """Start the OpenSSH master, if this link should have one and can."""
        if self._carrier_key is None:
            return None
        path = openssh.control_path(self._carrier_key)
        if path is None:
            log.info("no private directory for an OpenSSH control socket; tunnels carry "
                     "their own bytes", cluster=self.name)
            return None
        argv = openssh.master_argv(self.config, path, known_hosts_file(self.config), CIPHERS)
        self._master = openssh.Master(self.name, argv, path)
        return asyncio.create_task(self._master.run(), name=f"openssh-{self.name}")

    def carry(self, client: socket.socket, host: str, port: int,
              on_end: openssh.OnEnd) -> openssh.Forward | None:
        """Hand a connection to the OpenSSH master, to host:port from the login node; None
        when there is no master up to take it."""
        return self._master.carry(client, host, port, on_end) if self._master else None

    async def wait_up(self, timeout: float) -> bool:
        """Wait until connected; False on timeout."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), timeout)
        return self._up.is_set()

    def _require(self) -> asyncssh.SSHClientConnection:
        if self._conn is None:
            # A new exception each time: re-raising the stored one would grow its traceback.
            raise ClusterUnreachable(str(self.error or "not connected"))
        return self._conn

    async def run(
        self, command: str, *, stdin: str | None = None, timeout: float = 60.0
    ) -> asyncssh.SSHCompletedProcess:
        """Run a command on the login node; secrets go through `stdin`, never `command`."""
        conn = self._require()
        try:
            async with self._exec_slots:
                return await asyncio.wait_for(
                    conn.run(command, input=stdin, check=False), timeout
                )
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise ClusterUnreachable(f"{self.config.host}: {exc or 'timed out'}") from exc

    async def open_connection(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A direct-tcpip channel from the login node to host:port, as asyncio streams."""
        conn = self._require()
        try:
            reader, writer = await conn.open_connection(host, port)
        except (OSError, asyncssh.Error) as exc:
            raise ClusterUnreachable(f"cannot reach {host}:{port}: {exc}") from exc
        return reader, writer  # type: ignore[return-value]

    async def run_lines(
        self, command: str, on_line: Callable[[str], None], timeout: float
    ) -> int:
        """Run a command, handing each line of its output (stderr merged into stdout) to
        `on_line` as it comes; returns the exit status."""
        conn = self._require()
        try:
            async with asyncio.timeout(timeout):
                async with conn.create_process(command, stderr=asyncssh.STDOUT) as process:
                    async for line in process.stdout:
                        on_line(line.rstrip("\n"))
                    completed = await process.wait()
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise ClusterUnreachable(f"{self.config.host}: {exc or 'timed out'}") from exc
        return completed.exit_status if completed.exit_status is not None else -1

    async def stream_lines(self, command: str, on_line: Callable[[str], None]) -> None:
        """Run a long-lived command, handing each line of its output to `on_line`."""
        conn = self._require()
        async with conn.create_process(command) as process:
            async for line in process.stdout:
                on_line(line.rstrip("\n"))


def bash(script: str) -> str:
    """A command that runs `script` in bash whatever the user's login shell is."""
    return f"exec bash -c {shlex.quote(script)}"

