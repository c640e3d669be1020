"""What the session's port answers while no notebook does: a page for browsers, 503 for the rest.

Pure: the tunnel hands over the request's head and what the session is doing (`Waiting`,
made from the record without its token), and gets back the bytes to send. The page reloads
itself, so once the notebook answers the same address (with whatever token it carries)
reaches Jupyter. It holds no token and loads nothing from elsewhere.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timedelta

RETRY_AFTER = 5  # seconds a program is told to wait before asking again
RELOAD = {"failed": 15, "login": 5}  # seconds between reloads; 3 for every other phase


@dataclass(frozen=True)
class Waiting:
    """What the page says: the session's phase and job, never its token."""

    name: str
    phase: str
    message: str
    job_id: str | None = None
    submitted_at: datetime | None = None
    starts_at: datetime | None = None  # the scheduler's estimate for a queued job
    previous: str = ""  # how the previous job ended (an idle stop, a walltime end)
    cluster: str = ""


@dataclass(frozen=True)
class Request:
    """The parts of an HTTP request head that decide the answer."""

    wants_page: bool  # Accept names text/html: a browser loading a page
    background: bool  # an open page's own traffic (fetch, websocket), not a person


def parse_head(head: bytes) -> Request | None:
    """The request in `head` (up to the blank line), or None when it is not HTTP."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    headers = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip().lower()
    mode = headers.get("sec-fetch-mode", "")
    return Request(
        wants_page="text/html" in headers.get("accept", ""),
        # A browser marks each request: `navigate` is a page opened or reloaded; `cors`,
        # `no-cors`, `websocket`… come from a page already open, such as JupyterLab's polls.
        background=bool(mode and mode != "navigate") or headers.get("upgrade") == "websocket",
    )


def answer(request: Request, waiting: Waiting, now: datetime, *, starting: bool) -> bytes:
    """The full HTTP response; `starting`: this request has just asked for a job."""
    if not request.wants_page or request.background:
        body = f"{waiting.name}: {waiting.phase}: {waiting.message}\n".encode()
        return _response("503 Service Unavailable", "text/plain; charset=utf-8", body,
                         f"Retry-After: {RETRY_AFTER}\r\n")
    return _response("200 OK", "text/html; charset=utf-8",
                     render(waiting, now, starting=starting).encode(), "")


def _response(status: str, kind: str, body: bytes, extra: str) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\nReferrer-Policy: no-referrer\r\n"
            "X-Frame-Options: DENY\r\nX-Content-Type-Options: nosniff\r\n"
            "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n"
            f"{extra}\r\n")
    return head.encode() + body


def render(waiting: Waiting, now: datetime, *, starting: bool = False) -> str:
    """The page: phase, job, the scheduler's reason and estimate, what to do."""
    phase, message = waiting.phase, waiting.message
    if phase == "idle" and starting:
        phase, message = "pending", "starting a new job now"
    rows = [("Phase", phase), ("Detail", message)]
    if waiting.job_id:
        rows.append(("Job", waiting.job_id))
    if waiting.submitted_at is not None and phase not in ("idle", "failed"):
        rows.append(("Submitted", f"{_ago(now - waiting.submitted_at)} ago"))
    if waiting.starts_at is not None and phase == "pending":
        rows.append(("Expected start", _when(waiting.starts_at, now)))
    if waiting.previous:
        rows.append(("Before", waiting.previous))
    advice = _advice(waiting, phase)
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in rows)
    reload = RELOAD.get(phase, 3)
    return (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"refresh\" content=\"{reload}\">"
        f"<title>{html.escape(waiting.name)}: {html.escape(phase)}</title>"
        "<style>body{font-family:sans-serif;margin:3em;color:#222}"
        "th{text-align:left;padding-right:1em;vertical-align:top}</style></head><body>"
        f"<h1>{html.escape(waiting.name)}</h1>"
        f"<table>{table}</table><p>{html.escape(advice)}</p>"
        f"<p><small>nbtether; this page reloads every {reload} s and becomes the notebook "
        "once it answers.</small></p></body></html>"
    )


def _advice(waiting: Waiting, phase: str) -> str:
    if phase == "failed":
        return ("nbtether gave up on this session. Fix what the detail says, then save the "
                f"session file again; `nbtether logs {waiting.name}` shows the job's output.")
    if phase == "login":
        return (f"The cluster needs a person to log in: run `nbtether login {waiting.cluster}`. "
                "Running jobs are left alone meanwhile.")
    if phase == "invalid":
        return "The session file does not validate: `nbtether validate` says why."
    if phase == "idle":
        return "No job runs. Reload this page to start one at this same address."
    return "The notebook is on its way; nothing to do but wait."


def _ago(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _when(at: datetime, now: datetime) -> str:
    stamp = at.strftime("%Y-%m-%d %H:%M UTC")
    return f"{stamp} (in {_ago(at - now)})" if at > now else f"{stamp} (any moment now)"
