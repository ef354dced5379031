"""Checking settings with line numbers: a loop file's sections checked against the settings their stages
declare (selfimprove.core.stage.Setting), every problem collected with the file line of its key, then raised
together. Generic: nothing here knows what a loop is (selfimprove.loop.loopfile does).
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

import yaml



class Problems:
    """Collects errors with their line numbers; raised together at the end. A key a --set override gave
    is named as that --set, not by a line of the file (overrides: key path -> the --set text)."""

    def __init__(self, source: str, lines: dict[tuple, int], overrides: dict[tuple, str] | None = None):
        self.source, self.lines, self.items, self.overrides = source, lines, [], overrides or {}

    def add(self, path: tuple, message: str) -> None:
        given = self._given(path)
        key = ".".join(map(str, path)) or "(top level)"
        if given:
            self.items.append(f"--set {given}: {'' if key == given else key + ': '}{message}")
            return
        line = self._line_of(path)
        self.items.append(f"{f'{self.source}:{line}' if line else self.source}: {key}: {message}")

    def _given(self, path: tuple) -> str | None:
        """The --set a problem at path comes from: one that set the key or a key above it, else, going up
        from the key to the first level the file has, one that made that level (schedule.9 made by
        --set schedule.9.pairs.min_votes=0.6; a missing reward.model beside a --set reward.source)."""
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.overrides:
                return self.overrides[path[:cut]]
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.lines:
                return None  # the file has it: its line says where
            made = next((text for key, text in self.overrides.items() if key[:cut] == path[:cut]), None)
            if made:
                return made
        return None

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
    if kind is float and isinstance(value, (int, float, str)):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("not finite")
        return number
    if kind is int and isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    if isinstance(value, kind):
        return value
    raise ValueError


def check_section(values: Any, settings: dict, path: tuple, problems: Problems) -> dict:
    """The values of one section, coerced to their settings' types; unknown keys, wrong types and
    values outside the choices are problems."""
    if not isinstance(values, dict):
        problems.add(path, f"must be a mapping of settings, got {type(values).__name__}")
        return {}
    checked = {}
    for key, value in values.items():
        if key not in settings:
            problems.add(path + (key,), did_you_mean(key, settings))
            continue
        setting = settings[key]
        try:
            checked[key] = coerce(value, setting.type)
        except (ValueError, TypeError):
            kind = "a finite number" if setting.type is float else setting.type.__name__
            problems.add(path + (key,), f"expected {kind}, got {shown(value)}; write e.g. {key}: {setting.default!r}")
            continue
        texts = checked[key] if isinstance(checked[key], list) else [checked[key]]
        if any(isinstance(t, str) and has_credentials(t) for t in texts):
            problems.add(path + (key,), "a URL with a user or password in it would be written to params.yaml; give the "
                         "URL without them and the key in the environment variable that api_key_env names")
            del checked[key]
            continue
        if setting.choices and checked[key] not in setting.choices:
            close = difflib.get_close_matches(str(checked[key]), [str(c) for c in setting.choices], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.add(path + (key,), f"{checked[key]!r} is not one of: {', '.join(map(str, setting.choices))}{hint}")
    return checked


def check_values(values: dict, settings: dict, path: tuple, problems: Problems, seen: set, origin=None) -> None:
    """Range checks on resolved values (defaults and overrides merged); each key reported once, not
    once per iteration (seen holds the paths already reported). origin(key) -> the key path that gave
    the value, where it is not path + (key,) (a schedule entry)."""
    for key, setting in settings.items():
        where = origin(key) if origin else path + (key,)
        if setting.check is None or where in seen or key not in values:
            continue
        if not setting.check(values[key]):
            seen.add(where)
            problems.add(where, f"{values[key]!r} {setting.fix}")


def has_credentials(text: str) -> bool:
    """Whether a value is a URL carrying a user or a password (http://user:key@host/...)."""
    from urllib.parse import urlsplit

    if "://" not in text or "@" not in text:
        return False
    try:
        parts = urlsplit(text.replace("{port}", "1"))
        return bool(parts.username or parts.password)
    except ValueError:
        return "@" in text.split("://", 1)[1].split("/", 1)[0]


def shown(value: Any, limit: int = 60) -> str:
    """A user's value in a message: its repr, cut short (a value can be as large as the file)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def defaults(settings: dict) -> dict:
    return {key: setting.default for key, setting in settings.items()}
