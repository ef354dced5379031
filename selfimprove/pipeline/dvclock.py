"""A damaged dvc.lock, repaired before DVC reads it.

DVC rewrites dvc.lock in place after every stage (`open(path, "w+")`, not a temporary file and a
rename), so a full disk or a crash during that write leaves the file cut short. DVC then refuses the
whole project ("dvc.lock is invalid") and no run can resume. The records before the cut are whole: DVC
writes the file from the top. So the repair keeps every record that parses and has the shape DVC's
lock schema requires, drops the record the cut fell in, and writes the result atomically. Dropping a
record is always safe: DVC re-runs that stage, or restores its outputs from its run cache.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from selfimprove.core import files

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml where built in: lock files grow with runs
RECORD_START = re.compile(r"^  [^\s#][^\n]*:\s*$")  # "  <stage name>:" directly under "stages:"


def check(path: Path) -> str | None:
    """None when dvc.lock is whole (or absent), else what is wrong with it."""
    if not path.exists():
        return None
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        return f"not valid YAML ({str(error).splitlines()[0]})"
    if not isinstance(document, dict) or document.get("schema") != "2.0":
        return "no `schema: '2.0'` header"
    stages = document.get("stages") or {}
    if not isinstance(stages, dict):
        return "`stages` is not a mapping"
    bad = [name for name, record in stages.items() if not whole_record(record)]
    return f"the record of {bad[0]} is incomplete" if bad else None


def whole_record(record) -> bool:
    """Whether a stage's record has the shape DVC's own lock schema requires (a cut can leave, for
    example, `hash:` with no value, which DVC refuses)."""
    from dvc.schema import COMPILED_LOCK_FILE_STAGE_SCHEMA

    try:
        COMPILED_LOCK_FILE_STAGE_SCHEMA(record)
        return True
    except Exception:  # voluptuous raises its own Invalid hierarchy
        return False


def repair(path: Path) -> str | None:
    """Repair a damaged dvc.lock in place; return a one-line account of what was kept, or None when the
    file was whole."""
    problem = check(path)
    if problem is None:
        return None
    stages = salvage(path.read_text(encoding="utf-8", errors="replace"))
    if stages:
        text = yaml.safe_dump({"schema": "2.0", "stages": stages}, sort_keys=False, width=120)
        files.write_text(path, text, tmp_suffix=".selfimprove-tmp", encoding="utf-8")
    else:
        path.unlink()
    return (f"{path.name} was damaged ({problem}; a full disk or a crash while DVC wrote it): kept the "
            f"records of {len(stages)} stage(s); the stages after them run again or come from DVC's run cache")


def salvage(text: str) -> dict:
    """The whole records of a cut-short dvc.lock, in file order, without the one the cut fell in."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if RECORD_START.match(line)]
    for cut in reversed(starts):  # the longest prefix of whole records that parses
        try:
            document = yaml.load("".join(lines[:cut]), Loader=Loader)
        except yaml.YAMLError:
            continue
        if isinstance(document, dict) and isinstance(document.get("stages"), dict):
            return {name: record for name, record in document["stages"].items() if whole_record(record)}
    return {}
