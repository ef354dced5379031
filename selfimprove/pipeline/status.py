"""What `selfimprove status` shows: every compiled stage with its state, as DVC sees it.

A colleague's clone has dvc.lock but none of the outputs until `dvc pull`; DVC reports those stages as
changed (their outputs and the upstream outputs they read are missing), which is not the same as an input
that changed: such a stage is "not checked out", and only a changed input makes it "stale".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from selfimprove.core import registry
from selfimprove.core.errors import UserError
from selfimprove.pipeline.compiler import STAGE_RE
from selfimprove.pipeline.workspace import dvc_env


def stage_status(project: Path) -> list[dict]:
    """Every compiled stage with its state: done, stale (inputs changed since it ran), not checked out (done,
    its outputs in neither the workspace nor the local cache), pending, or done? (DVC could not tell)."""
    dvc_yaml = project / "dvc.yaml"
    if not dvc_yaml.exists():
        raise UserError(f"{project}: no dvc.yaml; run a loop first, e.g. selfimprove run loops/scpo.yaml")
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    produced = _produced(stages)
    lock_path = project / "dvc.lock"
    locked = set((yaml.safe_load(lock_path.read_text()) or {}).get("stages", {})) if lock_path.exists() else set()
    changed = _dvc_changed(project)
    run_scoped = [stage.name for stage in registry.stages() if stage.scope == "run"]  # one node per run
    rows = []
    for name in stages:
        match = STAGE_RE.match(name)
        if match:
            run, k, stage = match["run"], int(match["k"]), match["stage"]
        elif scope := next((s for s in run_scoped if name.endswith(f"-{s}")), None):
            run, k, stage = name[: -len(scope) - 1], None, scope
        else:
            run, k, stage = "-", None, name
        if changed is None:
            state = "done?" if name in locked else "pending"
        elif name not in locked:
            state = "pending"
        else:
            state = _changed_state(changed[name], produced) if name in changed else "done"
        rows.append({"run": run, "iteration": k, "stage": stage, "name": name, "state": state})
    return rows


def _produced(stages: dict) -> set[str]:
    """Every path a stage writes (outs, metrics, plots)."""
    paths = set()
    for node in stages.values():
        for key in ("outs", "metrics", "plots"):
            paths |= {next(iter(entry)) if isinstance(entry, dict) else entry for entry in node.get(key, [])}
    return paths


def _changed_state(changes: list, produced: set[str]) -> str:
    """'not checked out' when all DVC reports is missing files the pipeline writes (its own outputs, or
    upstream outputs it reads); 'stale' for anything else: a changed command, param, dependency or output."""
    def missing(path: str, what) -> bool:
        return what in ("deleted", "not in cache") and any(path == p or path.startswith(f"{p}/") for p in produced)

    for change in changes:
        if not isinstance(change, dict) or set(change) - {"changed deps", "changed outs"}:
            return "stale"
        if not all(missing(path, what) for entries in change.values() for path, what in entries.items()):
            return "stale"
    return "not checked out"


def _dvc_changed(project: Path) -> dict[str, list] | None:
    """`dvc status`'s changes by stage name; None when DVC cannot tell (a run holds its lock)."""
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project, capture_output=True,
                            text=True, env=dvc_env())
    if result.returncode != 0:
        return None
    try:
        return {name.split(":")[-1]: changes for name, changes in json.loads(result.stdout or "{}").items()}
    except ValueError:
        return None
