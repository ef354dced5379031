"""`selfimprove push` / `pull`: a project shared through git (the pipeline, params, metrics) and a DVC
remote (every cached output: models, samples, pairs).

Metrics and plots are `cache: false` outputs: DVC leaves them to git, but the project's .gitignore ignores
all of runs/ (so that no model ends up in git). `push` therefore stages them with `git add -f`, beside
dvc.yaml, dvc.lock and params.yaml; once tracked, git follows their changes as it does any file.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from selfimprove.core.errors import UserError
from selfimprove.pipeline import gitsetup
from selfimprove.pipeline.workspace import dvc_env, workspace_lock

PIPELINE_FILES = ("dvc.yaml", "dvc.lock", "params.yaml", ".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore")
NO_REMOTE = ("no DVC remote: add one with `dvc remote add -d store PATH-OR-URL` (a folder, s3://..., ssh://...), "
             "then run again")


def push(project: Path, remote: str | None) -> list[str]:
    """Send every cached output to the DVC remote and stage what git carries; the lines to print."""
    if not (project / "dvc.lock").is_file():
        raise UserError(f"{project}: no dvc.lock, nothing to push; run a loop first (selfimprove run LOOP)")
    with workspace_lock(project, "selfimprove push"):  # a running stage's outputs are not finished yet
        sent = _dvc_transfer(project, "push", remote)
        lines = [f"dvc push: {sent}"]
        if gitsetup.git_state(project) in ("root", "subdir"):
            staged = git_files(project)
            subprocess.run(["git", "add", "-f", "--", *staged], cwd=project, check=True, capture_output=True)
            lines.append(f"git: staged {len(staged)} path(s) (dvc.yaml, dvc.lock, params.yaml, metrics, plots); "
                         "commit them with your loop files: git commit -m '...' && git push")
        else:
            lines.append("not a git repository: colleagues need dvc.yaml, dvc.lock, params.yaml and the metrics "
                         "files too (git init, then selfimprove push again)")
    return lines


def pull(project: Path, remote: str | None) -> str:
    """Fetch and check out every output dvc.lock names; what `dvc pull` said."""
    if not (project / "dvc.lock").is_file():
        raise UserError(f"{project}: no dvc.lock, nothing to pull; git pull the project first")
    with workspace_lock(project, "selfimprove pull"):
        return _dvc_transfer(project, "pull", remote)


def git_files(project: Path) -> list[str]:
    """The pipeline's files and the outputs DVC leaves to git (`cache: false`), those that exist."""
    document = yaml.safe_load((project / "dvc.yaml").read_text()) or {}
    uncached = []
    for node in (document.get("stages") or {}).values():
        for key in ("outs", "metrics", "plots"):
            uncached += [path for entry in node.get(key, []) if isinstance(entry, dict)
                         for path, options in entry.items() if (options or {}).get("cache") is False]
    return [path for path in dict.fromkeys([*PIPELINE_FILES, *uncached]) if (project / path).exists()]


def _dvc_transfer(project: Path, command: str, remote: str | None) -> str:
    """`dvc push` or `dvc pull`; its summary line, or its error as one line."""
    result = subprocess.run([sys.executable, "-m", "dvc", command, *(["-r", remote] if remote else [])], cwd=project,
                            capture_output=True, text=True, env=dvc_env())
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        if re.search(r"no remote specified|config file error: no remote", output, re.IGNORECASE):
            raise UserError(NO_REMOTE)
        errors = [line.removeprefix("ERROR: ") for line in output.splitlines() if line.startswith("ERROR")]
        reason = errors[-1] if errors else (output.splitlines() or [f"exit {result.returncode}"])[-1]
        raise UserError(f"dvc {command} failed: {reason}")
    summary = [line for line in output.splitlines() if re.search(r"\d+ files?|up to date", line)]
    return summary[-1] if summary else "done"
