"""Where in a YAML text a problem is: for messages that name FILE:LINE, not just a key."""

from __future__ import annotations

from collections.abc import Sequence

import yaml


def yaml_problem(exc: yaml.YAMLError, file: str | None = None) -> tuple[str, str]:
    """A YAML error as (one line: `FILE:LINE:COLUMN: reason`, the whole report with pointer);
    without a file name, the line starts `line L, column C:`. The one line leaves out
    PyYAML's context ("while parsing a block mapping"): the whole report has it.

    The whole report keeps PyYAML's lines (the offending line and a `^` under the column);
    squashed onto one line, the pointer would point at nothing.
    """
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    for attribute in ("context_mark", "problem_mark"):
        if (other := getattr(exc, attribute, None)) is not None:
            other.name = file or "the file"
    if mark is None:
        where = file or "the file"
    elif file is None:
        where = f"line {mark.line + 1}, column {mark.column + 1}"
    else:
        where = f"{file}:{mark.line + 1}:{mark.column + 1}"
    summary = f"{where}: not valid YAML: {problem}"
    return summary, f"{summary}\n{exc}"


def line_of(text: str, location: Sequence[str | int]) -> int | None:
    """The 1-based line of the value at `location` (keys and list indexes), or of its
    nearest parent that exists: a missing key is reported where its mapping starts."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for part in location:
        if isinstance(node, yaml.MappingNode):
            match = next((pair for pair in node.value if pair[0].value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
