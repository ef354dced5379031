"""`selfimprove run --dry-run`: which stages a run would run and which are up to date, running nothing.

It compiles the loop as `compile` does (dvc.yaml, params.yaml: the only files it writes) and asks DVC
(`dvc status`, which compares with the hashes in dvc.lock as `dvc repro` does) for the run's
stages. In a project where DVC was never set up, nothing has run: every stage would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from selfimprove.core.errors import UserError


def dry_run(loop_path: str, overrides: list[str], start_from: str | None, project: Path, console,
            replace: bool = False) -> int:
    from selfimprove.pipeline import compiler, runner, workspace

    loop = runner.prepared_loop(loop_path, overrides, start_from, project, console, replace)
    with workspace.workspace_lock(project, runner.command_line(loop_path, overrides, start_from) + " --dry-run"):
        stages = compiler.write(project, loop)
        will_run = _would_run(project, compiler.run_targets(loop.name), stages)
    for name in stages:
        state = "would run" if name in will_run else "up to date"
        console.print(f"  {name}: [{'yellow' if name in will_run else 'green'}]{state}[/]", highlight=False)
    console.print(f"{loop.name}: {len(will_run)} stage(s) would run, {len(stages) - len(will_run)} up to date "
                  "(dry run: nothing ran; dvc.yaml and params.yaml written, as `selfimprove compile` does)",
                  highlight=False, soft_wrap=True)
    return 0


def _would_run(project: Path, targets: list[str], stages: list[str]) -> set[str]:
    """The run's stages `dvc repro` would run: those `dvc status` finds changed (a setting, a code
    fingerprint, an input or an output missing), and every stage downstream of one (its input will
    change). `dvc repro --dry` cannot say it: it stops at the first input not made yet."""
    import json

    import yaml

    from selfimprove.pipeline.workspace import dvc_env

    if not (project / ".dvc").is_dir():
        return set(stages)  # DVC was never set up here: nothing has run
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", "--with-deps", *targets], cwd=project,
                            env=dvc_env(), capture_output=True, text=True)
    try:
        changed = set(json.loads(result.stdout or "{}"))
    except ValueError:
        changed = None
    if result.returncode != 0 or changed is None:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:]
        raise UserError(f"dvc status failed: {' '.join(last)}; run `dvc status` to see why")
    nodes = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    will, made = set(), set()  # stages that would run, and what they write
    for name in stages:  # compiled in order: a stage comes after those it reads from
        node = nodes.get(name, {})
        if name in changed or any(dep in made for dep in node.get("deps", [])):
            will.add(name)
            made |= {out if isinstance(out, str) else next(iter(out)) for key in ("outs", "metrics", "plots")
                     for out in node.get(key, [])}
    return will
