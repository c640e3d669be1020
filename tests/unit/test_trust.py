"""Which directories and files the daemon trusts: StrictModes up to the home directory."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from nbtether import trust
from nbtether.errors import ConfigError
from nbtether.state import StateStore
from nbtether.trust import (
    SETTLED_NS,
    Untrusted,
    check_directory,
    read_own_file,
    settled_listing,
)

LIMIT = 1024


def test_a_private_tree_under_home_is_trusted(tmp_path: Path) -> None:
    """A directory of the user's, not writable by others, under home, passes."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    check_directory(tmp_path / "a" / "b", home=tmp_path)


def test_parents_up_to_home_are_checked(tmp_path: Path) -> None:
    """A group- or world-writable parent below home makes the directory untrusted."""
    (tmp_path / "open" / "sessions.d").mkdir(parents=True)
    (tmp_path / "open").chmod(0o777)
    with pytest.raises(Untrusted, match=r"open is writable by others \(mode 0777\)"):
        check_directory(tmp_path / "open" / "sessions.d", home=tmp_path)


def test_nothing_above_home_is_checked(tmp_path: Path) -> None:
    """Above the home directory, even a world-writable directory does not matter."""
    (tmp_path / "home" / "sessions.d").mkdir(parents=True)
    tmp_path.chmod(0o777)
    try:
        check_directory(tmp_path / "home" / "sessions.d", home=tmp_path / "home")
    finally:
        tmp_path.chmod(0o700)


def test_a_root_owned_sticky_parent_is_allowed_outside_home(tmp_path: Path) -> None:
    """Outside home, /tmp (root's, sticky) may be a parent; the directory itself may not."""
    check_directory(tmp_path, home=tmp_path / "elsewhere")
    with pytest.raises(Untrusted, match="/tmp is writable by others"):
        check_directory(Path("/tmp"), home=tmp_path)


def test_another_users_directory_is_untrusted(tmp_path: Path) -> None:
    """A directory that belongs to someone else is refused, naming its owner."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(Untrusted, match=r"belongs to nobody \(uid 65534\), not to you"):
        check_directory(theirs, home=tmp_path)


def test_an_unsafe_state_directory_stops_the_daemon(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The state directory under a world-writable parent is a config error, said plainly."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "shared").mkdir(mode=0o777)
    (tmp_path / "shared").chmod(0o777)
    with pytest.raises(ConfigError, match=r"^state_dir: .*shared is writable by others"):
        StateStore(tmp_path / "shared" / "nbtether").prepare()
    assert not (tmp_path / "shared" / "nbtether").exists()


def _count_opens(monkeypatch: pytest.MonkeyPatch, path: Path) -> list[int]:
    """The daemon's opens of `path`, one entry each."""
    opens: list[int] = []
    real_open = os.open

    def counting(name: str | os.PathLike[str], *args: int) -> int:
        if os.fspath(name) == os.fspath(path):
            opens.append(1)
        return real_open(name, *args)

    monkeypatch.setattr(trust.os, "open", counting)
    return opens


def _settle() -> None:
    """Let the last change grow older than a read trusts its stat for."""
    time.sleep(2 * SETTLED_NS / 1e9)


def test_a_file_is_read_again_once_edited_chmodded_or_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unchanged file is read once; one edited in place (same size, mtime set back),
    chmodded or replaced by another is checked and read again."""
    path = tmp_path / "a.yaml"
    path.write_bytes(b"local_port: 8801\n")
    opens = _count_opens(monkeypatch, path)
    _settle()
    assert read_own_file(path, LIMIT) == b"local_port: 8801\n"
    assert read_own_file(path, LIMIT) == b"local_port: 8801\n"
    assert len(opens) == 1  # kept, so what follows shows when it is not

    mtime = path.stat().st_mtime_ns
    with path.open("r+b") as handle:
        handle.write(b"local_port: 8802\n")
    os.utime(path, ns=(mtime, mtime))
    _settle()
    assert read_own_file(path, LIMIT) == b"local_port: 8802\n"

    path.chmod(0o666)
    with pytest.raises(Untrusted, match="others can write to the file"):
        read_own_file(path, LIMIT)
    path.chmod(0o600)
    _settle()
    before = len(opens)
    assert read_own_file(path, LIMIT) == b"local_port: 8802\n"
    assert len(opens) == before + 1

    other = tmp_path / "other"
    other.write_bytes(b"local_port: 8803\n")
    os.utime(other, ns=(mtime, mtime))
    os.replace(other, path)
    _settle()
    assert read_own_file(path, LIMIT) == b"local_port: 8803\n"


def test_a_file_read_just_after_a_change_is_read_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within a tick of the file system's clock a file can change again and keep its stat,
    so a file read less than SETTLED_NS after its last change is not kept."""
    path = tmp_path / "a.yaml"
    path.write_bytes(b"local_port: 8801\n")
    opens = _count_opens(monkeypatch, path)
    changed = path.stat().st_ctime_ns
    monkeypatch.setattr(trust, "time", SimpleNamespace(time_ns=lambda: changed + 1_000_000))
    read_own_file(path, LIMIT)
    read_own_file(path, LIMIT)
    assert len(opens) == 2


def _later(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every change so far is older than SETTLED_NS from now on."""
    monkeypatch.setattr(trust, "time", SimpleNamespace(time_ns=lambda: time.time_ns() + 10**12))


def test_a_listing_differs_after_any_change_a_reader_could_see(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal listings of a directory mean its files read the same: an edit in place (same
    size, mtime set back), a chmod, a file added, replaced or removed each change it."""
    _later(monkeypatch)
    path = tmp_path / "a.yaml"
    path.write_bytes(b"local_port: 8801\n")
    first = settled_listing(tmp_path)
    assert first is not None and first == settled_listing(tmp_path)
    listings = [first]

    mtime = path.stat().st_mtime_ns
    with path.open("r+b") as handle:
        handle.write(b"local_port: 8802\n")
    os.utime(path, ns=(mtime, mtime))
    listings.append(settled_listing(tmp_path))
    path.chmod(0o644)
    listings.append(settled_listing(tmp_path))
    (tmp_path / "b.yaml").write_bytes(b"local_port: 8803\n")
    listings.append(settled_listing(tmp_path))
    other = tmp_path / "other"
    other.write_bytes(b"local_port: 8804\n")
    os.utime(other, ns=(mtime, mtime))
    os.replace(other, path)
    listings.append(settled_listing(tmp_path))
    (tmp_path / "b.yaml").unlink()
    listings.append(settled_listing(tmp_path))
    assert None not in listings and len(set(listings)) == len(listings)


def test_no_listing_while_an_entry_has_just_changed_or_the_directory_is_untrusted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within a tick of the file system's clock a file can change again and keep its stat;
    a directory others can write to is not vouched for at all."""
    path = tmp_path / "a.yaml"
    path.write_bytes(b"local_port: 8801\n")
    changed = path.stat().st_ctime_ns
    monkeypatch.setattr(trust, "time", SimpleNamespace(time_ns=lambda: changed + 1_000_000))
    assert settled_listing(tmp_path) is None
    _later(monkeypatch)
    assert settled_listing(tmp_path) is not None
    tmp_path.chmod(0o777)
    try:
        assert settled_listing(tmp_path) is None
    finally:
        tmp_path.chmod(0o700)
