"""One safe parse of a user's YAML (loop files, --set values): limits first, then PyYAML's safe loader.

What a user's file can do to a naive `yaml.safe_load`, and what this does instead (each is one
UserError naming the file and line):
- aliases that expand exponentially ("billion laughs"): the expanded size is counted on the composed
  node graph, where an alias is the same node object, before anything walks the data;
- duplicate keys (the last silently wins in PyYAML): refused, naming both lines;
- bytes that are not UTF-8: refused with the line; a UTF-8 BOM and CRLF line ends are fine;
- nesting thousands of levels deep (PyYAML recurses): refused at MAX_DEPTH;
- a file larger than any loop file needs: refused before parsing.
"""

from __future__ import annotations

from typing import Any

import yaml

from selfimprove.core.errors import UserError

MAX_BYTES = 1 << 20  # a loop file is a few kilobytes
MAX_DEPTH = 50
MAX_NODES = 100_000  # after alias expansion


class _Loader(yaml.SafeLoader):
    def __init__(self, stream, source: str):
        super().__init__(stream)
        self.source, self.depth = source, 0

    def compose_node(self, parent, index):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise UserError(f"{self.source}:{mark.line + 1}: nested more than {MAX_DEPTH} levels deep; a loop file "
                            "needs a few")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    where = "on this line" if seen[key] == line else f"first at line {seen[key]}"
                    raise UserError(f"{self.source}:{line}: {key!r} is given twice ({where}); keep one")
                seen[key] = line
            except TypeError:  # an unhashable key: PyYAML's own error names it
                break
        return super().construct_mapping(node, deep)


def _expanded_size(node: yaml.Node, sizes: dict) -> int:
    """Nodes the data would hold once every alias is expanded (an alias is the node it names, shared)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = MAX_NODES + 1  # a node that contains itself never ends
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    else:
        size = 1
    sizes[id(node)] = min(size, MAX_NODES + 1)
    return sizes[id(node)]


def decode(data: bytes, source: str) -> str:
    if len(data) > MAX_BYTES:
        raise UserError(f"{source}: {len(data):,} bytes, more than a loop file needs ({MAX_BYTES:,}); is it the right file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise UserError(f"{source}:{line}: byte 0x{data[error.start]:02x} is not UTF-8; save the file as UTF-8") from None


def load(text: str, source: str, numbered: bool = True) -> tuple[Any, yaml.Node | None]:
    """(the data, its composed node for line numbers) of one YAML document, within the limits.
    numbered: errors name source:line (a file), else source alone (a --set value, one line)."""
    try:
        loader = _Loader(text, source)
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node, {}) > MAX_NODES:
                raise UserError(f"{source}: its aliases expand to more than {MAX_NODES:,} values; write the values "
                                "out, or use fewer aliases")
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark and numbered else ""
        raise UserError(f"{source}{line}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax there") from None
    return data, node


def check_file(value: str, reads=None, where: str = "") -> None:
    """validate: a YAML file a setting names (an accelerate config) parses as a mapping, with the line of
    what is wrong."""
    from pathlib import Path

    from selfimprove.core.errors import UserError

    path = Path(value)
    if not path.is_file():
        raise UserError(f"{value}: no such file (paths are relative to the project directory)")
    document, _ = load(decode(path.read_bytes(), value), value)
    if not isinstance(document, dict):
        raise UserError(f"{value}:1: expected a YAML mapping of settings, got {type(document).__name__}")
