"""The documentation matches the code: generated files are current, examples are real."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer
import yaml
from typer.core import TyperGroup, TyperOption

from nbtether.cli import app
from nbtether.config import Settings
from nbtether.spec import SessionSpec, parse_session

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

INLINE = re.compile(r"`(nbtether(?: [^`\n]*)?)`")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL_FENCES = {"bash", "sh", "shell", "console", ""}
COMMAND_END = {"&", "&&", "|", "||", ";", ">", ">>", "#"}


def load_generator() -> ModuleType:
    """docs/generate.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("nbtether_docs_generate", DOCS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_reference_and_schema_are_current() -> None:
    """docs/reference.md and docs/session.schema.json are what docs/generate.py makes now."""
    stale = load_generator().stale()
    assert not stale, f"stale: {[p.name for p in stale]}; run `python docs/generate.py`"


def command_mentions() -> list[tuple[str, str]]:
    """Every `nbtether …` command line in README.md and docs/*.md, with its page."""
    found: list[tuple[str, str]] = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for lang, body in FENCE.findall(text):
            if lang in SHELL_FENCES:
                for line in body.splitlines():
                    line = line.strip().removeprefix("$ ")
                    if line.startswith("nbtether "):
                        found.append((page.name, line))
        prose = FENCE.sub("", text)
        found += [(page.name, mention) for mention in INLINE.findall(prose)]
    return found


def _words(line: str) -> list[str]:
    words = []
    for word in line.split()[1:]:
        if word in COMMAND_END or word.startswith("#"):
            break
        words.append(word.strip("[]"))
    return words


def _options(command: Any) -> dict[str, TyperOption]:
    return {opt: param for param in command.params if isinstance(param, TyperOption)
            for opt in param.opts + param.secondary_opts}


def check_command_line(line: str) -> str | None:
    """None if `line` names a real command with real options, else what is wrong."""
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    words = _words(line)
    command: Any = root
    while words and words[0].startswith("-"):  # global options before the command
        option = _options(root).get(words.pop(0).split("=", 1)[0])
        if option is None:
            return "unknown global option"
        if not option.is_flag and words:
            words.pop(0)
    if not words:
        return None
    while isinstance(command, TyperGroup) and words:
        name = words.pop(0)
        if name not in command.commands:
            return f"no command {name!r}"
        command = command.commands[name]
    known = _options(command)
    for word in words:
        if word.startswith("-"):
            for spelling in re.split(r"[|/]", word):
                if spelling.split("=", 1)[0] not in known:
                    return f"no option {spelling!r}"
    return None


@pytest.mark.parametrize(("page", "line"), command_mentions())
def test_documented_commands_exist(page: str, line: str) -> None:
    """Each `nbtether <command> [options]` in the README and docs is a real command."""
    assert check_command_line(line) is None, f"{page}: `{line}`: {check_command_line(line)}"


def yaml_blocks() -> list[tuple[str, int, str]]:
    """Every ```yaml block of README.md and docs/*.md, with its page and number."""
    blocks = []
    for page in PAGES:
        fenced = FENCE.findall(page.read_text(encoding="utf-8"))
        yamls = [body for lang, body in fenced if lang in ("yaml", "yml")]
        blocks += [(page.name, number, body) for number, body in enumerate(yamls, 1)]
    return blocks


def classify(body: str) -> str | None:
    """`session` if a top-level key is a session key, `config` if one is a config key,
    None (not checked) if the block has neither, e.g. a fragment of another file."""
    data = yaml.safe_load(body)
    keys = set(data) if isinstance(data, dict) else set()
    if keys & set(SessionSpec.model_fields):
        return "session"
    if keys & set(Settings.model_fields):
        return "config"
    return None


@pytest.mark.parametrize(("page", "number", "body"), yaml_blocks())
def test_documented_yaml_validates(
    page: str, number: int, body: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each YAML example that is a session file or a daemon config is accepted as written."""
    for variable in [v for v in os.environ if v.upper().startswith("NBTETHER_")]:
        monkeypatch.delenv(variable)
    kind = classify(body)
    if kind == "session":
        spec = parse_session("example", body)
        assert isinstance(spec, SessionSpec), f"{page} yaml block {number}: {spec}"
    elif kind == "config":
        Settings.model_validate(yaml.safe_load(body))


def test_getting_started_has_both_kinds_of_example() -> None:
    """The getting-started guide shows at least one config and one session file."""
    kinds = {classify(body) for page, _, body in yaml_blocks() if page == "getting-started.md"}
    assert {"config", "session"} <= kinds
