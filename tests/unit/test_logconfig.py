"""Logs: one format for structlog and stdlib records, and tracebacks without locals."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from nbtether.logconfig import configure


def _fail_with_a_secret() -> None:
    token = "secret-token-value"  # noqa: F841 (a local that must not be logged)
    raise RuntimeError("boom")


@pytest.mark.parametrize("as_json", [True, False])
def test_tracebacks_never_show_local_variables(as_json: bool,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """An exception logged by the daemon shows its traceback but not the locals in it."""
    configure(json=as_json)
    try:
        _fail_with_a_secret()
    except RuntimeError:
        structlog.get_logger("test").exception("reconcile failed", session="nb")
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err and "reconcile failed" in err
    assert "secret-token-value" not in err


def test_json_lines_carry_the_session(capsys: pytest.CaptureFixture[str]) -> None:
    """In JSON mode every line is an object, bound to its session when there is one."""
    configure(json=True)
    structlog.get_logger("test").info("session changed", session="nb", phase="ready")
    logging.getLogger("asyncssh").warning("from the standard library")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["session"] == "nb" and lines[0]["phase"] == "ready"
    assert lines[1]["event"] == "from the standard library"
