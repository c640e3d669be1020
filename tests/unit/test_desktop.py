"""Desktop notifications, shown through a stand-in for the desktop.

The desktop's `notify-send` (and macOS's `osascript`) is replaced by a real executable
placed first on PATH that records its argv to a file: a stand-in for the desktop, so the
tests see exactly the command line nbtether runs, with no notification daemon needed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nbtether.desktop import DesktopNotifier, scrub, worth_telling
from nbtether.state import Phase, Record

FAKE = """\
#!{python}
import json, sys
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv) + "\\n")
"""


@pytest.fixture
def shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake notify-send and osascript first on PATH; returns the file they record into."""
    bin_dir, log = tmp_path / "bin", tmp_path / "shown.jsonl"
    bin_dir.mkdir()
    for name in ("notify-send", "osascript"):
        fake = bin_dir / name
        fake.write_text(FAKE.format(python=sys.executable, log=str(log)))
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return log


def calls(log: Path) -> list[list[str]]:
    """Each recorded command line, program name first."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def record(phase: Phase, message: str = "", token: str = "s3cr3t" * 8) -> Record:
    """A session record in `phase`."""
    return Record(name="analysis", cluster="create", token=token, local_port=8888,
                  phase=phase, message=message)


def test_ready_shows_the_session_and_its_port_but_never_the_token(shown: Path) -> None:
    """Becoming ready runs notify-send with name, phase and the token-less URL, as argv."""
    notifier = DesktopNotifier(platform="linux")
    ready = record("ready", message="1:59 left")
    notifier.phase_changed("starting", ready)
    notifier.close()
    [argv] = calls(shown)
    assert Path(argv[0]).name == "notify-send"
    assert argv[1:] == ["--app-name=nbtether", "--urgency=normal", "--",
                        "nbtether: analysis is ready",
                        "http://127.0.0.1:8888/ (nbtether open analysis)"]
    assert ready.token not in json.dumps(argv)


def test_failure_is_urgent_and_its_message_loses_the_token(shown: Path) -> None:
    """A failure is critical; a token in its message (bare or as token=) is cut out."""
    token = "abcdef0123456789" * 3
    message = f"gave up: http://127.0.0.1:8888/lab?token={token} and {token} again"
    notifier = DesktopNotifier(platform="linux")
    notifier.phase_changed("pending", record("failed", message=message, token=token))
    notifier.close()
    [argv] = calls(shown)
    assert argv[2] == "--urgency=critical"
    assert argv[4] == "nbtether: analysis is failed"
    assert argv[5] == "gave up: http://127.0.0.1:8888/lab?token=… and … again"
    assert token not in json.dumps(argv)


def test_routine_changes_stay_quiet(shown: Path) -> None:
    """pending→starting and ready→ready show nothing; losing readiness does."""
    notifier = DesktopNotifier(platform="linux")
    notifier.phase_changed("pending", record("starting"))
    notifier.phase_changed("ready", record("ready"))
    notifier.phase_changed("ready", record("pending", message="previous job ended (TIMEOUT)"))
    notifier.close()
    assert [argv[4:] for argv in calls(shown)] == [
        ["nbtether: analysis is pending", "previous job ended (TIMEOUT)"]]


def test_a_handover_warns_before_the_end_and_tells_of_the_new_kernel(shown: Path) -> None:
    """Entering handover warns that the kernel stops; the switch says it was replaced."""
    notifier = DesktopNotifier(platform="linux")
    before = "walltime ends in 10 min: the kernel stops then, save your notebooks; …"
    after = "kernel replaced just now (job 101 took over at the walltime end): …"
    notifier.phase_changed("ready", record("handover", message=before))
    notifier.close()  # one at a time, so the stand-in records them in order
    notifier.phase_changed("handover", record("ready", message=after))
    notifier.close()
    assert [argv[4:] for argv in calls(shown)] == [
        ["nbtether: analysis: kernel stops at the walltime end", before],
        ["nbtether: analysis: kernel replaced", after]]


def test_macos_passes_the_texts_as_arguments_to_osascript(shown: Path) -> None:
    """On macOS, osascript gets a fixed script and the texts as argv, so nothing is quoted."""
    notifier = DesktopNotifier(platform="darwin")
    notifier.phase_changed("starting", record("invalid", message='resources.mem: "2 G" "bad"'))
    notifier.close()
    [argv] = calls(shown)
    assert Path(argv[0]).name == "osascript"
    assert argv[1:] == ["-e", "on run argv",
                        "-e", "display notification (item 2 of argv) with title (item 1 of argv)",
                        "-e", "end run",
                        "nbtether: analysis is invalid", 'resources.mem: "2 G" "bad"']


def test_without_a_notifier_program_nothing_happens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No notify-send on PATH: notifications are silently off, never an error."""
    monkeypatch.setenv("PATH", str(tmp_path))
    notifier = DesktopNotifier(platform="linux")
    assert notifier.program is None
    notifier.phase_changed("starting", record("ready"))
    notifier.close()


def test_long_messages_are_cut_short(shown: Path) -> None:
    """A message longer than a notification should be is cut to 200 characters."""
    notifier = DesktopNotifier(platform="linux")
    notifier.phase_changed("pending", record("failed", message="x" * 1000))
    notifier.close()
    [argv] = calls(shown)
    assert argv[5] == "x" * 199 + "…"


@pytest.mark.parametrize(("text", "expected"), [
    ("see /lab?token=abc123&x=1", "see /lab?token=…&x=1"),
    ("TOKEN=abc#frag", "TOKEN=…#frag"),
    ("no secret here", "no secret here"),
])
def test_scrub_elides_token_parameters(text: str, expected: str) -> None:
    """Anything shaped like a token URL parameter is elided even without knowing the token."""
    assert scrub(text) == expected


def test_worth_telling_table() -> None:
    """The phase changes that notify: ready, handover, failed, invalid, lost readiness."""
    assert worth_telling("starting", "ready")
    assert worth_telling("handover", "ready") and worth_telling("ready", "handover")
    assert worth_telling("ready", "failed") and worth_telling("ready", "invalid")
    assert worth_telling("handover", "starting")
    assert not worth_telling("pending", "starting")
    assert not worth_telling("ready", "stopping")
    assert worth_telling("ready", "login") and worth_telling("pending", "login")
    assert not worth_telling("login", "login")
