"""Which local files and directories the daemon trusts: OpenSSH's StrictModes, for nbtether.

A session file is code that runs on the cluster as the user (`environment.setup`), and the
state directory holds every token. So, as sshd checks `~/.ssh` before it trusts
`authorized_keys`, the daemon trusts a directory only when it and its parents up to the home
directory belong to the user (or root) and no one else can write to them, and a session
file only when it is a regular file of the user's that no one else can write to.

Two allowances keep this usable: a group whose only member is the user (a "user private
group", as Debian's OpenSSH allows with umask 002) is not someone else, and a parent outside
the home directory may be a root-owned sticky directory such as /tmp, where others cannot
rename or remove what is ours.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import time
from pathlib import Path


class Untrusted(Exception):
    """A file or directory the daemon will not read; the message says why and what to do."""


def check_directory(path: Path, home: Path | None = None) -> None:
    """Raise `Untrusted` unless `path` and its parents up to `home` are the user's alone.

    A directory that does not exist yet is fine (it will be created 0700); its existing
    parents are still checked. Outside the home directory the parents are checked up to /.
    """
    # os.path rather than pathlib: the daemon checks this on every pass over a session.
    top = os.path.realpath(home or os.path.expanduser("~"))
    target = os.path.realpath(os.path.expanduser(path))
    chain = [target]  # the directory, then each parent up to /
    while (parent := os.path.dirname(chain[-1])) != chain[-1]:
        chain.append(parent)
    for directory in chain:
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise Untrusted(f"cannot check {directory}: {exc.strerror}") from exc
        if st.st_uid not in (os.getuid(), 0):
            raise Untrusted(f"{directory} belongs to {_user(st.st_uid)}, not to you")
        if directory != target and st.st_uid == 0 and st.st_mode & stat.S_ISVTX:
            pass  # like /tmp: others may add entries, but cannot replace ours
        elif _writable_by_others(st):
            raise Untrusted(
                f"{directory} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run chmod go-w {directory}"
            )
        if directory == top:
            return


# Session files are read on every pass over every session (they are validated together, for
# their ports), so most reads find a file as it was: kept here, by path, with its stat when
# read. Any change to a file changes its ctime (which, unlike mtime, no one can set back) or
# its inode (a file renamed over it). But a file system's clock ticks every few ms, so a
# file changed in the same tick as it is read could change again unseen: a file is kept
# only once its last change is SETTLED_NS older than the read (git's "racy" entries).
Identity = tuple[int, ...]
_KEPT: dict[str, tuple[Identity, bytes]] = {}
KEPT_FILES = 256
SETTLED_NS = 20_000_000


def _identity(st: os.stat_result) -> Identity:
    """The stat of a file, and whether others can write to it (which also depends on who
    is in its group)."""
    return (st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size,
            st.st_mtime_ns, st.st_ctime_ns, _writable_by_others(st))


def read_own_file(path: Path, limit: int) -> bytes:
    """The bytes of `path`, a regular file of the user's, at most `limit` of them.

    Symlinks are followed, to a file the user owns only. Anything else (a FIFO, a device, a
    socket, a directory, another user's file, a file others can write to, a bigger file)
    raises `Untrusted` without being read, and a FIFO is never opened, so it cannot block.

    Every call checks a fresh `stat` of the file; only the reading is skipped for a file
    read before whose stat is the same (see `_KEPT`).
    """
    now = time.time_ns()
    try:
        before = path.stat()
    except OSError as exc:
        raise Untrusted(f"cannot read the file: {exc.strerror}") from exc
    if not stat.S_ISREG(before.st_mode):
        raise Untrusted(f"not a regular file but a {_kind(before.st_mode)}; nothing was read")
    _check_own_file(before)
    if before.st_size > limit:
        raise Untrusted(f"the file is larger than {_size(limit)} ({_size(before.st_size)})")
    identity = _identity(before)
    kept = _KEPT.get(str(path))
    if kept is not None and kept[0] == identity:
        return kept[1]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise Untrusted(f"cannot read the file: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(handle.fileno())
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise Untrusted("the file was replaced while it was read")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise Untrusted(f"the file is larger than {_size(limit)}")
    if now - before.st_ctime_ns > SETTLED_NS:
        if len(_KEPT) >= KEPT_FILES:
            _KEPT.clear()
        _KEPT[str(path)] = (identity, data)
    return data


def settled_listing(directory: Path) -> tuple[tuple[str, Identity | None], ...] | None:
    """Every entry of a trusted directory with the identity (the stat) of what it names:
    equal listings mean that nothing a reader of the directory's files could see has
    changed. None when the directory is not trusted or an entry changed within SETTLED_NS
    of now (it could change again unseen, as in `read_own_file`)."""
    now = time.time_ns()
    try:
        check_directory(directory)
        with os.scandir(directory) as entries:
            found = sorted(entries, key=lambda entry: entry.name)
    except (Untrusted, OSError):
        return None
    listing: list[tuple[str, Identity | None]] = []
    for entry in found:
        try:
            st = entry.stat()
        except OSError:
            listing.append((entry.name, None))
            continue
        if now - st.st_ctime_ns <= SETTLED_NS:
            return None
        listing.append((entry.name, _identity(st)))
    return tuple(listing)


def _check_own_file(st: os.stat_result) -> None:
    if st.st_uid != os.getuid():
        raise Untrusted(f"the file belongs to {_user(st.st_uid)}, not to you; nothing was read")
    if _writable_by_others(st):
        raise Untrusted(
            f"others can write to the file (mode {stat.S_IMODE(st.st_mode):04o}); "
            "run chmod go-w on it"
        )


def _writable_by_others(st: os.stat_result) -> bool:
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and not _private_group(st.st_gid)


def _private_group(gid: int) -> bool:
    """The user's own primary group, with no other member."""
    if gid != os.getgid():
        return False
    try:
        members = set(grp.getgrgid(gid).gr_mem)
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return False
    return members <= {user}


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "directory", stat.S_ISFIFO: "named pipe (FIFO)",
             stat.S_ISCHR: "character device", stat.S_ISBLK: "block device",
             stat.S_ISSOCK: "socket"}
    return next((name for test, name in kinds.items() if test(mode)), "special file")


def _size(count: int) -> str:
    return f"{count / 1024 / 1024:.1f} MiB" if count >= 1024 * 1024 else f"{count // 1024} KiB"
