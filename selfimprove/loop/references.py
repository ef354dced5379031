"""`validate` reads what a loop will read: every setting that names something (a template, a pairs file,
example prompts, a model, a Python function, a YAML file; selfimprove.core.stage.Reads) is checked by the
reader of its kind (the registry's FILE_KINDS), the one its stage reads with, on a bounded prefix. A
problem is added at the key that gave the value (the file's line, or the --set); what is only not here
yet (a hub model to download) becomes a note.

Data files a loop reads must live in the project: a colleague's clone has the project's files only.
"""

from __future__ import annotations

import os
from pathlib import Path

from selfimprove.core.errors import UserError
from selfimprove.core.registry import resolve

DATA_KINDS = ("pairs", "examples", "template", "yaml")  # files of the project (a model may live anywhere)


def check_references(raw: dict, model: str, per_iteration: dict, pipelines: dict, problems, notes: list[str]) -> None:
    """Check the loop's model and every reference of the stages its iterations run."""
    if model and not model.startswith(("builtin:", "runs/")):  # builtins: _bootstrap; runs/: made paths
        _check(("model",), "model", model, resolve("file kind", "model"), None, problems, notes)
    seen = set()
    for k, pipeline in sorted(pipelines.items()):
        for stage in pipeline:
            for key, setting in resolve("stage", stage).settings.items():
                value = per_iteration[k][stage].get(key)
                reads = setting.reads
                if reads is None or not isinstance(value, str) or not value or value in reads.not_files:
                    continue
                if value.removeprefix("./").startswith("runs/") or (stage, key, value) in seen:
                    continue  # made by another step or this run (selfimprove.loop.prechecks.check_made_paths)
                seen.add((stage, key, value))
                path = origin(raw, k, stage, key)
                if reads.kind in DATA_KINDS and (outside := outside_project(value)):
                    problems.add(path, outside)
                    continue
                _check(path, f"{stage}.{key}", value, resolve("file kind", reads.kind), reads, problems, notes)


def _check(path: tuple, where: str, value: str, reader, reads, problems, notes: list[str]) -> None:
    try:
        note = reader(value, reads, where)
    except UserError as error:
        for line in error.lines:
            problems.add(path, line)
        return
    if note:
        notes.append(f"{where}: {note}")


def origin(raw: dict, k: int, stage: str, key: str) -> tuple:
    """The key path that gave iteration k's value of stage.key: its schedule entry, else the stages section;
    for a key neither gives (a default), the schedule entry of the stage where iteration k has one (its
    settings made the combination a check refuses), else the stages section."""
    schedule = raw.get("schedule") if isinstance(raw.get("schedule"), dict) else {}
    entry = schedule.get(k) if isinstance(schedule.get(k), dict) else {}
    base = raw.get("stages") if isinstance(raw.get("stages"), dict) else {}
    if isinstance(entry.get(stage), dict) and (key in entry[stage] or key not in (base.get(stage) or {})):
        return ("schedule", k, stage, key)
    return ("stages", stage, key)


class AtOrigin:
    """An iteration's view of the problems: a stage's own check names a key as stages.STAGE.KEY, and where
    the iteration's value came from its schedule entry the problem is added there (that line, or that
    --set), not at the stages: section the value did not come from."""

    def __init__(self, problems, raw: dict, k: int):
        self.problems, self.raw, self.k = problems, raw, k

    def add(self, path: tuple, message: str) -> None:
        if len(path) == 3 and path[0] == "stages":
            path = origin(self.raw, self.k, path[1], path[2])
        self.problems.add(path, message)


def outside_project(value: str) -> str | None:
    """Why a data path is refused (it leaves the project directory), or None."""
    project = Path(os.getcwd()).resolve()
    try:
        target = (project / Path(value).expanduser()).resolve()
    except (OSError, RuntimeError):
        return None
    if target == project or project in target.parents:
        return None
    return (f"{value} is outside the project directory ({project}): a colleague's clone, and DVC's record of "
            "what the stage read, would not have it; copy it into the project (e.g. data/) and give its path "
            "from the project root")
