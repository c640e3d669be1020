"""The reconciler's reading of the session files: validated again only when something that
decides the result changed, and then always."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from nbtether import trust
from nbtether.config import ClusterConfig, Settings
from nbtether.reconciler import Reconciler
from nbtether.spec import InvalidSpec, SessionSpec
from nbtether.state import Record, StateStore


def settings_for(root: Path, *clusters: str) -> Settings:
    return Settings(sessions_dir=root / "sessions.d", state_dir=root / "state",
                    clusters={name: ClusterConfig(host="login") for name in clusters})


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every change to a file is older than trust.SETTLED_NS when the files are read."""
    monkeypatch.setattr(trust, "time", SimpleNamespace(time_ns=lambda: time.time_ns() + 10**12))


async def test_unchanged_files_are_not_validated_again_but_every_change_is_seen(
        tmp_path: Path, settled: None) -> None:
    """Passes that find the directory, the ports held and the settings as they were share
    one validation; an edit in place (same size, mtime set back), a port taken by another
    session and a reloaded config each give a new one."""
    settings = settings_for(tmp_path, "hpc")
    settings.sessions_dir.mkdir()
    path = settings.sessions_dir / "a.yaml"
    path.write_text("cluster: hpc\nlocal_port: 8801\n")
    reconciler = Reconciler(settings, StateStore(settings.state_dir), {}, lambda _name: None)
    first = await reconciler.load_specs()
    assert await reconciler.load_specs() is first

    mtime = path.stat().st_mtime_ns
    path.write_text("cluster: hpc\nlocal_port: 8802\n")
    os.utime(path, ns=(mtime, mtime))
    edited = (await reconciler.load_specs())["a"]
    assert isinstance(edited, SessionSpec) and edited.local_port == 8802

    (settings.sessions_dir / "b.yaml").write_text("cluster: hpc\nlocal_port: 8802\n")
    assert isinstance((await reconciler.load_specs())["b"], InvalidSpec)
    holder = Record.new("b")
    holder.phase, holder.local_port = "ready", 8802
    reconciler.records["b"] = holder
    taken = (await reconciler.load_specs())["a"]
    assert isinstance(taken, InvalidSpec) and "already used by session 'b'" in taken.reason

    reconciler.settings = settings_for(tmp_path, "other")
    unknown = (await reconciler.load_specs())["a"]
    assert isinstance(unknown, InvalidSpec) and "unknown cluster 'hpc'" in unknown.reason
