"""What `selfimprove status` shows: every compiled stage with its state, as DVC sees it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from selfimprove.core import registry
from selfimprove.core.errors import UserError
from selfimprove.pipeline.compiler import STAGE_RE
from selfimprove.pipeline.runner import dvc_env


def stage_status(project: Path) -> list[dict]:
    """Every compiled stage with its state: done, stale (inputs changed since it ran) or pending."""
    dvc_yaml = project / "dvc.yaml"
    if not dvc_yaml.exists():
        raise UserError(f"{project}: no dvc.yaml; run a loop first, e.g. selfimprove run loops/scpo.yaml")
    stages = list((yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}))
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
            state = "stale" if name in changed else "done"
        rows.append({"run": run, "iteration": k, "stage": stage, "name": name, "state": state})
    return rows


def _dvc_changed(project: Path) -> set[str] | None:
    """Names of stages `dvc status` reports as changed; None when DVC cannot tell (a run holds its lock)."""
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project, capture_output=True,
                            text=True, env=dvc_env())
    if result.returncode != 0:
        return None
    try:
        return {name.split(":")[-1] for name in json.loads(result.stdout or "{}")}
    except ValueError:
        return None
