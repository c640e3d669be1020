"""Which directories the daemon trusts: StrictModes up to the home directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nbtether.errors import ConfigError
from nbtether.state import StateStore
from nbtether.trust import Untrusted, check_directory


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
