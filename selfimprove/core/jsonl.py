"""Reading a user's JSON Lines file (preference pairs, example prompts): each record with its line number,
every defect one line naming the file and the line. The stages and `validate` read with the same
functions; validate passes a limit, so a large file costs a bounded prefix.

    for line, record in records("prefs.jsonl", "lift.pairs_file", limit=1000): ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfimprove.core.errors import UserError

MAX_CHECKED_BYTES = 64 << 20  # validate reads at most this much of a file (and at most `limit` records)


def records(path: str | Path, setting: str, example: str, limit: int | None = None) -> list[tuple[int, dict]]:
    """(line number, record) of every non-blank line, or of the first `limit`. example: one record as the
    file should hold it, shown in the messages."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{setting}: {path}: no such file (paths are relative to the project directory)")
    data = _head(path) if limit else path.read_bytes()
    found = []
    for number, raw in enumerate(data.splitlines(), 1):
        line = _decoded(raw, path, number, cut=limit is not None and len(data) == MAX_CHECKED_BYTES)
        if line is None or not line.strip():
            continue
        found.append((number, _parsed(line, path, number, example)))
        if limit and len(found) >= limit:
            break
    if not found:
        raise UserError(f"{path}: the file is empty; it needs one JSON object per line, e.g. {example}")
    return found


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(MAX_CHECKED_BYTES)


def _decoded(raw: bytes, path: Path, number: int, cut: bool) -> str | None:
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        if cut and error.start > len(raw) - 4:
            return None  # the read limit cut the last line inside a character
        raise UserError(f"{path}:{number}: byte 0x{raw[error.start]:02x} is not UTF-8; save the file as UTF-8 "
                        "(e.g. iconv -f latin1 -t utf-8)") from None


def _parsed(line: str, path: Path, number: int, example: str) -> dict:
    array = UserError(f"{path}:{number}: a JSON array, not JSON Lines; write one object per line (e.g. "
                      f"jq -c '.[]' {path.name} > fixed.jsonl)")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        if number == 1 and line.lstrip().startswith("["):
            raise array from None
        raise UserError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno}); each line is one "
                        f"object, e.g. {example}") from None
    if isinstance(record, list) and number == 1:
        raise array
    if not isinstance(record, dict):
        raise UserError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}; each line is one "
                        f"object, e.g. {example}")
    return record


def text_field(record: dict, field: str, path: Path | str, number: int, fields: tuple[str, ...]) -> str:
    """record[field] as text, or a one-line error: missing (with the record's near-miss key, if any),
    null, or not a string."""
    if field not in record:
        import difflib

        others = [str(k) for k in record if k not in fields]
        close = [k for k in others if field in k.lower()][:1] or difflib.get_close_matches(field, others, n=1)
        hint = f"; it has '{close[0]}': rename it" if close else f"; it has {', '.join(map(str, record)) or 'no fields'}"
        raise UserError(f"{path}:{number}: no field '{field}'{hint} (each line needs {', '.join(fields)})")
    value: Any = record[field]
    if not isinstance(value, str):
        shown = "null" if value is None else f"{type(value).__name__} {json.dumps(value)[:40]}"
        raise UserError(f"{path}:{number}: {field} is {shown}, not text; write it as a JSON string")
    return value
