"""Checking a user's prompts or eval file at `validate` time, where reading it is cheap: every problem a
stage would otherwise meet as a traceback from `datasets`, as one line naming the file and the line
(JSONL) or row (JSON, Parquet).

    problems = check_data_file("data/train.jsonl", "question", "answer", need_answers=False)
"""

from __future__ import annotations

import json
from pathlib import Path

MAX_CHECKED_BYTES = 200 << 20  # beyond this the first rows are checked, the rest when the stage reads them
TEXT_TYPES = (str, int, float)  # a question or answer the loader turns into text


def check_data_file(spec: str, question_field: str, answer_field: str, need_answers: bool | None) -> list[str]:
    """Problems of one data file (empty when it is fine): one string per problem, at most a few.
    need_answers None (an eval file): answers are optional (instruction prompts have none, and are
    compared by win rate), but a file that gives them gives them on every row."""
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _check_parquet(path, question_field, answer_field, need_answers)
    data = path.read_bytes()[:MAX_CHECKED_BYTES]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        if len(data) == MAX_CHECKED_BYTES and error.start > len(data) - 4:
            text = data[:error.start].decode("utf-8-sig")  # a character cut by the read limit
        else:
            line = data[:error.start].count(b"\n") + 1
            return [f"{spec}:{line}: byte 0x{data[error.start]:02x} is not UTF-8; save the file as UTF-8"]
    if not text.strip():
        return [f"{spec}: the file is empty; it needs one record per prompt, e.g. {{\"{question_field}\": \"...\"}}"]
    rows = _jsonl_rows(spec, text) if suffix == ".jsonl" else _json_rows(spec, text)
    if isinstance(rows, str):
        return [rows]
    problems = []
    if need_answers is None:
        need_answers = bool(rows) and isinstance(rows[0][1], dict) and answer_field in rows[0][1]
    for where, row in rows:
        problem = _row_problem(spec, where, row, question_field, answer_field, need_answers)
        if problem:
            problems.append(problem)
            if len(problems) == 3:
                break
    return problems


def _jsonl_rows(spec: str, text: str):
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((f"{spec}:{number}", json.loads(line)))
        except json.JSONDecodeError as error:
            return f"{spec}:{number}: not valid JSON ({error.msg} at column {error.colno}); fix that line"
    return rows


def _json_rows(spec: str, text: str):
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        return f"{spec}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno}); fix it there"
    if isinstance(document, dict):  # {"data": [...]} or columns {"question": [...], ...}
        document = document.get("data", document)
    if isinstance(document, dict):
        columns = [v for v in document.values() if isinstance(v, list)]
        if not columns:
            return f"{spec}: expected a list of records, e.g. [{{\"question\": \"...\"}}]"
        document = [dict(zip(document, values)) for values in zip(*document.values())]
    if not isinstance(document, list):
        return f"{spec}: expected a list of records, e.g. [{{\"question\": \"...\"}}]"
    if not document:
        return f"{spec}: holds no records"
    return [(f"{spec}: record {i + 1}", row) for i, row in enumerate(document)]


def _row_problem(spec: str, where: str, row, question_field: str, answer_field: str, need_answers: bool) -> str | None:
    if not isinstance(row, dict):
        return f"{where}: expected a record like {{\"{question_field}\": \"...\"}}, got {type(row).__name__}"
    wanted = (question_field, answer_field) if need_answers else (question_field,)
    missing = [f for f in wanted if f not in row]
    if missing:
        has = ", ".join(map(str, list(row)[:8])) or "nothing"
        return (f"{where}: no field {', '.join(missing)} (it has {has}); set data.question_field / "
                "data.answer_field to the file's names")
    for field in wanted:
        value = row[field]
        if isinstance(value, bool) or not isinstance(value, TEXT_TYPES):
            return f"{where}: {field} is {type(value).__name__}, expected text"
        if field == question_field and not str(value).strip():
            return f"{where}: {field} is empty"
    return None


def _check_parquet(path: Path, question_field: str, answer_field: str, need_answers: bool) -> list[str]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as error:  # pyarrow's errors for a file that is not Parquet
        return [f"{path}: not a readable Parquet file ({type(error).__name__}: {str(error)[:80]})"]
    wanted = (question_field, answer_field) if need_answers else (question_field,)  # None: answers optional
    missing = [f for f in wanted if f not in schema.names]
    if missing:
        return [f"{path}: no column {', '.join(missing)} (it has {', '.join(schema.names[:8])}); set "
                "data.question_field / data.answer_field to the file's names"]
    return [] if rows else [f"{path}: holds no rows"]


def question_prefix(spec: str, question_field: str, rows: int = 200, chars: int = 500) -> list[str]:
    """The first characters of the first questions of a JSONL or JSON file (a bounded read: what the
    vocabulary check at validate looks at); [] for a file it cannot read that way (its problems are
    check_data_file's)."""
    path = Path(spec)
    if path.suffix.lower() not in (".jsonl", ".json") or not path.is_file():
        return []
    text = path.read_bytes()[:MAX_CHECKED_BYTES].decode("utf-8-sig", errors="ignore")
    found = _jsonl_rows(spec, text) if path.suffix.lower() == ".jsonl" else _json_rows(spec, text)
    if isinstance(found, str):
        return []
    return [str(row[question_field])[:chars] for _, row in found[:rows]
            if isinstance(row, dict) and isinstance(row.get(question_field), TEXT_TYPES)]
