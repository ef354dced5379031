"""`selfimprove rm RUN`: take a run out of the project's pipeline.

Its stages leave dvc.yaml and dvc.lock, its section params.yaml, its plots the top-level plots; the
bootstrap stage of a builtin model and code fingerprints that no remaining stage uses go too (as
compiler.compile_loop drops code keys no node reads), so what is left is the pipeline of the other runs
as if they alone had been compiled. Outputs stay in runs/RUN/ unless asked (`--outputs`): they are the
user's results, and DVC's cache keeps a copy of the cached ones either way (`dvc gc` frees it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from selfimprove.core.errors import UserError
from selfimprove.core.registry import suggestion
from selfimprove.pipeline import compiler
from selfimprove.pipeline.compiler import HEADER, STAGE_RE, dump, run_dir
from selfimprove.core.files import atomic_file

NOT_RUNS = ("code", "builtin")  # params.yaml sections that are no run's


def runs(stages: dict, params: dict) -> list[str]:
    """The runs the project has compiled: those with stages, and those with a params section."""
    named = [match["run"] for name in stages if (match := STAGE_RE.match(name))]
    named += [key for key, value in params.items() if key not in NOT_RUNS and isinstance(value, dict)]
    return list(dict.fromkeys(named))


def check_known(project: Path, run: str, stages: dict | None = None, params: dict | None = None) -> None:
    """An unknown run is refused with the closest name, before anything is changed or asked."""
    if stages is None:
        stages = compiler._read_compiled(project / "dvc.yaml").get("stages") or {}
        params = compiler._read_compiled(project / "params.yaml")
    known = runs(stages, params or {})
    if run not in known:
        hint = suggestion(run, known) if known else "no run is compiled here"
        raise UserError(f"rm {run}: no run named {run!r} in {project / 'dvc.yaml'}; {hint}")


def remove_run(project: Path, run: str) -> list[str]:
    """Rewrite dvc.yaml, params.yaml and dvc.lock without the run; the names of the stages removed.
    The caller holds the workspace lock."""
    document = compiler._read_compiled(project / "dvc.yaml")
    params = compiler._read_compiled(project / "params.yaml")
    stages = document.get("stages") or {}
    check_known(project, run, stages, params)
    removed = [name for name in stages if compiler._belongs_to(name, run)]
    kept = {name: node for name, node in stages.items() if name not in removed}
    _refuse_dependants(run, kept)
    kept = _without_unused_bootstrap(kept, removed)
    removed += [name for name in stages if name not in kept and name not in removed]
    params.pop(run, None)
    _drop_unused_params(params, kept)
    plots = [entry for entry in document.get("plots") or [] if not (isinstance(entry, dict) and any(
        str(path).startswith(f"{run_dir(run)}/") for path in entry))]
    new_document = {**document, "stages": kept}
    if plots:
        new_document["plots"] = plots
    else:
        new_document.pop("plots", None)
    _write(project / "dvc.yaml", HEADER + dump(new_document))
    _write(project / "params.yaml", HEADER + dump(params))
    _drop_from_lock(project / "dvc.lock", removed)
    return removed


def delete_outputs(project: Path, run: str) -> Path | None:
    """runs/RUN, deleted; None when there was none."""
    directory = project / run_dir(run)
    if (project / "runs").resolve() not in directory.resolve().parents:  # a run name never leaves runs/
        raise UserError(f"rm {run}: {directory} is not inside {project / 'runs'}; delete it yourself")
    if not directory.exists():
        return None
    shutil.rmtree(directory)
    return directory


def output_summary(project: Path, run: str) -> str:
    """What --outputs deletes: the folder, its files and size."""
    directory = project / run_dir(run)
    if not directory.exists():
        return f"{directory} (does not exist)"
    sizes = [p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.is_symlink()]
    return f"{directory}/ ({len(sizes)} file(s), {sum(sizes) / 1e6:.1f} MB)"


def _refuse_dependants(run: str, kept: dict) -> None:
    """A run started from this one (`--from RUN@K`) reads its models: it would lose its inputs."""
    prefix = f"{run_dir(run)}/"
    users = sorted({STAGE_RE.match(name)["run"] if STAGE_RE.match(name) else name for name, node in kept.items()
                    if any(str(dep).startswith(prefix) for dep in node.get("deps", []))})
    if users:
        raise UserError(f"rm {run}: run(s) {', '.join(users)} start from {run}'s models (--from {run}@K); "
                        f"remove them first (selfimprove rm {users[0]})")


def _without_unused_bootstrap(kept: dict, removed: list[str]) -> dict:
    """Drop a bootstrap stage (a builtin model) that no remaining stage reads; keep everything else."""
    def read(path: str) -> bool:
        return any(path in node.get("deps", []) for node in kept.values())

    return {name: node for name, node in kept.items() if not name.startswith("bootstrap-")
            or any(read(out) for out in node.get("outs", []) if isinstance(out, str))}


def _drop_unused_params(params: dict, kept: dict) -> None:
    """Code fingerprints and builtin sections that no remaining stage tracks."""
    used = {key for node in kept.values() for key in node.get("params", []) if isinstance(key, str)}
    if isinstance(params.get("code"), dict):
        params["code"] = {key: value for key, value in params["code"].items() if f"code.{key}" in used}
    if isinstance(params.get("builtin"), dict):
        params["builtin"] = {key: value for key, value in params["builtin"].items() if f"builtin.{key}" in used}
        if not params["builtin"]:
            del params["builtin"]


def _drop_from_lock(path: Path, removed: list[str]) -> None:
    """dvc.lock without the removed stages' records (DVC keeps records of stages it no longer knows)."""
    if not path.exists():
        return
    lock = yaml.safe_load(path.read_text()) or {}
    stages = lock.get("stages") or {}
    if any(name in stages for name in removed):
        lock["stages"] = {name: entry for name, entry in stages.items() if name not in removed}
        _write(path, yaml.safe_dump(lock, sort_keys=False, width=120, default_flow_style=False))


def _write(path: Path, text: str) -> None:
    with atomic_file(path) as f:  # whole or not at all: a kill mid-write never leaves a cut-short file
        f.write(text)
