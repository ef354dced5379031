"""Schema checking with line numbers: a loop file's sections checked against the tables in
selfimprove.settings, every problem collected with the file line of its key, then raised together.
Generic: nothing here knows what a loop is (selfimprove.config does).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import yaml

from selfimprove.settings import CHOICES


class Problems:
    """Collects errors with their line numbers; raised together at the end."""

    def __init__(self, source: str, lines: dict[tuple, int]):
        self.source, self.lines, self.items = source, lines, []

    def add(self, path: tuple, message: str) -> None:
        line = self._line_of(path)
        where = f"{self.source}:{line}" if line else self.source
        self.items.append(f"{where}: {'.'.join(map(str, path)) or '(top level)'}: {message}")

    def _line_of(self, path: tuple) -> int | None:
        for cut in range(len(path), -1, -1):  # the nearest ancestor that has a line
            if path[:cut] in self.lines:
                return self.lines[path[:cut]]
        return None


def key_lines(node: yaml.Node, path: tuple = ()) -> dict[tuple, int]:
    """Map every key path of a composed YAML document to its 1-based line."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = scalar(key_node.value)
            lines[path + (key,)] = key_node.start_mark.line + 1
            lines.update({k: v for k, v in key_lines(value_node, path + (key,)).items() if k != path + (key,)})
    return lines


def scalar(text: str) -> Any:
    return int(text) if text.isdigit() else text


def did_you_mean(key: str, allowed) -> str:
    close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1)
    if close:
        return f"unknown key; did you mean '{close[0]}'?"
    return f"unknown key; allowed: {', '.join(sorted(map(str, allowed)))}"


def coerce(value: Any, kind: type) -> Any:
    """Return value as kind, or raise ValueError. bool is not an int here, and '3e-05' is a float."""
    if isinstance(value, bool) and kind is not bool:
        raise ValueError
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    if kind is float and isinstance(value, str):
        return float(value)
    if kind is int and isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    if isinstance(value, kind):
        return value
    raise ValueError


def check_section(values: Any, schema: dict, path: tuple, problems: Problems, stage: str | None = None) -> dict:
    if not isinstance(values, dict):
        problems.add(path, f"must be a mapping of settings, got {type(values).__name__}")
        return {}
    checked = {}
    for key, value in values.items():
        if key not in schema:
            problems.add(path + (key,), did_you_mean(key, schema))
            continue
        kind = schema[key][0]
        try:
            checked[key] = coerce(value, kind)
        except (ValueError, TypeError):
            problems.add(path + (key,), f"expected {kind.__name__}, got {value!r}; write e.g. {key}: {schema[key][1]!r}")
            continue
        choices = CHOICES.get((stage, key))
        if choices and checked[key] not in choices:
            problems.add(path + (key,), f"{checked[key]!r} is not one of: {', '.join(choices)}")
    return checked


def defaults(schema: dict) -> dict:
    return {key: default for key, (_, default) in schema.items()}
