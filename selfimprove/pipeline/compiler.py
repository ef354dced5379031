"""Compile a loop into explicit per-iteration DVC stages (dvc.yaml) and their params (params.yaml).

The compiler walks each iteration's pipeline and asks every stage for its node in the iteration's
context (selfimprove.core.stage.Context): the paths of what earlier stages wrote, the policy model, the
params keys. It knows no stage by name. What it adds to every node: the files the stage's settings name
(DVC dependencies) and the fingerprints of the code the stage runs (params, selfimprove.pipeline.fingerprint).

Why explicit stages and not foreach/matrix: each iteration depends on the previous one through a plain
file dependency (its model), DVC runs them in order, and growing 3 -> 5 iterations marks only the new
stages as changed (see docs/dvc-notes.md). Stage names are `<run>-it<K>-<stage>`; the base model is
evaluated as iteration 0. Several runs share one dvc.yaml: compiling a loop replaces only its own stages.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import yaml

from selfimprove.tasks import data as data_section
from selfimprove.pipeline import fingerprint
from selfimprove.backends.config import tracked_keys
from selfimprove.core.errors import UserError
from selfimprove.loop.loopfile import Loop, builtin_name, resolved_params
from selfimprove.models import builtin
from selfimprove.core.registry import module_of, resolve, stages
from selfimprove.core.stage import Context, Stage, builtin_directory, tracked_values
from selfimprove.stages._io import atomic_file

STAGE_RE = re.compile(r"^(?P<run>.+)-it(?P<k>\d+)-(?P<stage>[a-z][a-z_]*)$")
HEADER = "# Compiled by `selfimprove run` from loop files; edit the loop file, not this file.\n"


def stage_name(run: str, k: int, stage: str) -> str:
    return f"{run}-it{k}-{stage}"


def run_dir(run: str) -> str:
    return f"runs/{run}"


def iteration_dir(run: str, k: int) -> str:
    return f"runs/{run}/it{k}"


def base_model(loop: Loop) -> tuple[str, bool]:
    """(the model iteration 1 starts from, whether it is a file dependency)."""
    if loop.start_from:
        run, k = loop.start_from.split("@")
        return (f"{iteration_dir(run, int(k))}/model" if int(k) > 0 else _base_of_other(run)), True
    if builtin(loop.model):
        return builtin_directory(builtin_name(loop)), True
    return loop.model, Path(loop.model).is_dir()  # a hub id is params (id + revision), never hashed


def _base_of_other(run: str) -> str:
    raise UserError(f"from: {run}@0 is the base model of {run}; start from its model reference instead "
                    f"(model: ...), or from {run}@1 or later")


class _Compilation:
    """What every node of one loop's compilation shares: the project, the code fingerprints recorded so
    far, and the loop-level params keys."""

    def __init__(self, loop: Loop, project: Path):
        self.loop, self.project, self.code = loop, project, {}
        self.backend_keys = [f"{loop.name}.{key}" for key in tracked_keys(loop)]

    def data_keys(self, side: str) -> list[str]:
        """The data keys a stage reading data.<side> tracks, one by one, so that changing the eval set
        never re-runs generation and changing the prompts never re-runs the base model's evaluation."""
        other = "eval" if side == "prompts" else "prompts"
        tracked = tracked_values(data_section.SETTINGS, self.loop.data)
        return [f"{self.loop.name}.data.{key}" for key in tracked if key not in (other, f"{other}_size")]

    def data_file(self, side: str) -> list[str]:
        spec = self.loop.data[side]
        return [spec] if Path(self.project, spec).is_file() else []

    def _setting_files(self, stage: Stage, ctx: Context) -> list[Path]:
        """The files behind the stage's file settings: its own, or those its declaration says it reads."""
        pairs = stage.files(ctx) if stage.files else [(stage.name, key) for key, s in stage.settings.items() if s.file]
        paths = []
        for owner, key in pairs:
            setting, value = resolve("stage", owner).settings[key], ctx.settings[owner][key]
            path = (setting.resolve_file(value) if setting.resolve_file else Path(value)) if value else None
            if path is not None:
                paths.append(path)
        return paths

    def file_deps(self, stage: Stage, ctx: Context) -> list[str]:
        """The user's files among them (a package's prompt is code), relative to the project."""
        return [_relative(p, self.project) for p in self._setting_files(stage, ctx) if not fingerprint.package_file(p)]

    def code_keys(self, stage: Stage, ctx: Context) -> list[str]:
        units = [stage.module] + [_module(kind, name) for kind, name in stage.plugins(ctx)]
        units += [f for f in map(fingerprint.package_file, self._setting_files(stage, ctx)) if f]
        return self.record(units)

    def record(self, units: list[str]) -> list[str]:
        keys = []
        for unit in dict.fromkeys(units):
            key = fingerprint.unit_key(unit)
            self.code[key] = fingerprint.unit_fingerprint(unit)
            keys.append(f"code.{key}")
        return keys


def compile_stages(loop: Loop, project: Path, compilation: _Compilation | None = None,
                   plots: list | None = None) -> dict[str, dict]:
    """The run's DVC nodes by name; its top-level plot definitions are appended to plots."""
    plots = [] if plots is None else plots
    compilation = compilation or _Compilation(loop, project)
    run, nodes, adapter_bases, metrics, curves, artifacts = loop.name, {}, {}, [], [], {}
    model, model_is_dep = base_model(loop)
    model_code: tuple[str, ...] = ()  # what loading the current policy runs, beyond the loader
    base = (model, model_is_dep)
    tracked = tuple(loop.tracked())
    for k in range(0, loop.iterations + 1):
        pipeline = ([resolve("stage", name) for name in loop.pipelines[k]] if k
                    else loop.base_stages())
        inputs: dict[str, str] = {"model": model}
        for stage in pipeline:
            settings = loop.per_iteration[k if k else loop.base_iteration_of(stage.name)]
            ctx = _context(compilation, loop, k, settings, model, model_is_dep, base, inputs, tracked, stage,
                           iteration_dir(run, k))
            node = stage.node(ctx)
            if model_code and model in node["deps"]:
                node["params"] += [key for key in compilation.record(list(model_code)) if key not in node["params"]]
            nodes[stage_name(run, k, stage.name)] = node
            if stage.plot:
                plots.append(stage.plot(ctx))
            metrics += [path for entry in node.get("metrics", []) for path in entry]
            curves += [name for name in stage.curves if name not in curves]
            inputs = {**inputs, **ctx.outputs}  # a later stage reads the latest writer of each artifact
            if "model" in stage.writes:
                if stage.adapter(settings):  # loading an adapter needs the model it was trained on
                    adapter_bases[ctx.outputs["model"]] = [model] if model_is_dep else []
                model, model_is_dep, model_code = ctx.outputs["model"], True, stage.model_code
        artifacts[k] = dict(inputs)  # what the iteration ended with: the latest writer of each artifact
    for stage in stages():
        if stage.scope == "run":
            ctx = _context(compilation, loop, loop.iterations, loop.per_iteration[loop.iterations], model,
                           model_is_dep, base, {}, tracked, stage, run_dir(run))
            ctx.metrics, ctx.curves = list(metrics), list(curves)
            ctx.artifacts, ctx.loop_file = dict(artifacts), origin(loop, project)["loop_file"]
            nodes[run_stage_name(run, stage.name)] = stage.node(ctx)
            if stage.plot:
                plots.append(stage.plot(ctx))
    return _with_adapter_bases(nodes, adapter_bases)


def _context(compilation: _Compilation, loop: Loop, k: int, settings: dict, model: str, model_is_dep: bool,
             base: tuple[str, bool], inputs: dict, tracked: tuple, stage: Stage, out: str) -> Context:
    return Context(run=loop.name, k=k, out=out, settings=settings, policy=model, policy_is_dep=model_is_dep,
                   base=base[0], base_is_dep=base[1], inputs=dict(inputs),
                   outputs={artifact: f"{out}/{name}" for artifact, name in stage.writes.items()},
                   tracked=tracked, backend=loop.backend, backend_keys=compilation.backend_keys,
                   data_keys=compilation.data_keys, data_file=compilation.data_file,
                   code_keys=compilation.code_keys, file_deps=compilation.file_deps, iterations=loop.iterations,
                   project=compilation.project, data=loop.data)


def _with_adapter_bases(stages: dict[str, dict], adapter_bases: dict[str, list[str]]) -> dict[str, dict]:
    """A LoRA iteration's model directory holds an adapter; loading it merges it into the model it was
    trained on (recorded in its adapter_config.json), which may be an adapter too. So every stage that
    depends on an adapter directory also depends on the whole chain of directories under it."""
    def chain(path: str) -> list[str]:
        return [d for base in adapter_bases.get(path, []) for d in [base] + chain(base)]

    for stage in stages.values():
        extra = [d for dep in stage["deps"] for d in chain(dep) if d not in stage["deps"]]
        if extra:
            stage["deps"] = stage["deps"] + list(dict.fromkeys(extra))
    return stages


def _module(kind: str, name: str) -> str:
    """The module a stage's plugin is: a registry entry's, or a module of the package named outright."""
    return name if kind == "module" else module_of(kind, name)


def _relative(path: Path, project: Path) -> str:
    try:
        return str(path.resolve().relative_to(project.resolve()))
    except ValueError:
        return str(path)


def run_stage_name(run: str, stage: str) -> str:
    return f"{run}-{stage}"


def run_targets(run: str) -> list[str]:
    """The run's last stages (scope "run": its report), the targets `selfimprove run` hands to dvc
    repro: DVC reproduces everything upstream of them, checking each stage once."""
    return [run_stage_name(run, stage.name) for stage in stages() if stage.scope == "run"]


def bootstrap_stage(loop: Loop, project: Path, compilation: _Compilation | None = None) -> dict[str, dict]:
    """The node that builds the loop's builtin model, if it starts from one."""
    found = builtin(loop.model)
    if not found or loop.start_from:
        return {}
    compilation = compilation or _Compilation(loop, project)
    name = builtin_name(loop)  # one stage per builtin and settings: a loop's bootstrap changes no other run's
    return {f"bootstrap-{name}": {
        "cmd": f"python -m {found.builder} --params params.yaml --section builtin.{name} --out {builtin_directory(name)}",
        "deps": [],
        "params": [f"builtin.{name}"] + compilation.record(found.code_units(loop.bootstrap)),
        "outs": [builtin_directory(name)],
    }}


def compile_loop(loop: Loop, project: Path, existing_stages: dict | None = None,
                 existing_params: dict | None = None, existing_plots: list | None = None) -> tuple[dict, dict]:
    """(dvc.yaml content, params.yaml content) with this loop's stages replacing its old ones."""
    compilation = _Compilation(loop, project)
    stages = {name: stage for name, stage in (existing_stages or {}).items() if not _belongs_to(name, loop.name)}
    stages.update(bootstrap_stage(loop, project, compilation))
    plots: list = []
    stages.update(compile_stages(loop, project, compilation, plots))
    params = dict(existing_params or {})
    params[loop.name] = {**resolved_params(loop), **origin(loop, project)}
    found = builtin(loop.model)
    if found and not loop.start_from:
        settings = getattr(importlib.import_module(found.builder), "SETTINGS", {})
        params.setdefault("builtin", {})[builtin_name(loop)] = tracked_values(settings, loop.bootstrap)
    # Keys no node reads any more (a module moved or renamed by an upgrade) are dropped, not kept forever.
    used = {key.removeprefix("code.") for node in stages.values() for key in node.get("params", [])
            if isinstance(key, str) and key.startswith("code.")}
    merged = {**(params.get("code") or {}), **compilation.code}
    params["code"] = {key: value for key, value in merged.items() if key in used}
    # top-level plots: the other runs' (kept, as their stages are) and this run's
    own = {path for entry in plots for path in entry}
    kept = [entry for entry in (existing_plots or []) if isinstance(entry, dict)
            and not any(path.startswith(f"{run_dir(loop.name)}/") or path in own for path in entry)]
    return {"stages": stages, **({"plots": kept + plots} if kept or plots else {})}, params


def _belongs_to(stage: str, run: str) -> bool:
    match = STAGE_RE.match(stage)
    return bool(match and match.group("run") == run) or stage in run_targets(run)


def dump(document: dict) -> str:
    return yaml.safe_dump(document, sort_keys=False, width=120, default_flow_style=False)


def origin(loop: Loop, project: Path) -> dict:
    """What made a run, kept in its params (no stage reads it): the loop file, from the project root, and
    the iteration it started from. Another loop of the same name is then noticed (check_replace)."""
    path = Path(os.path.abspath(loop.path))
    try:
        shown = path.relative_to(Path(os.path.abspath(project))).as_posix()
    except ValueError:
        shown = str(path)
    return {"loop_file": shown, **({"from": loop.start_from} if loop.start_from else {})}


def check_replace(existing_params: dict, loop: Loop, project: Path) -> None:
    """Refuse to compile over a run of the same name made by another loop file or started from another
    model: its stages and params would be silently replaced and recomputed. (A section an older version
    wrote records neither, and is taken as this loop's.)"""
    old = existing_params.get(loop.name)
    if not isinstance(old, dict) or "loop_file" not in old:
        return
    new = origin(loop, project)
    way_out = (f"give this run its own name (name: in the loop file, or --set name={loop.name}-2), or add "
               f"--replace to replace {loop.name}")
    if old["loop_file"] != new["loop_file"]:
        raise UserError(f"{new['loop_file']}: a run named {loop.name} already exists here, made by "
                        f"{old['loop_file']}; running this loop as {loop.name} would replace its stages and "
                        f"results; {way_out}")
    if old.get("from") != new.get("from"):
        raise UserError(f"{new['loop_file']}: run {loop.name} started from {old.get('from') or 'its base model'}; "
                        f"starting it from {new.get('from') or 'its base model'} would recompute every iteration "
                        f"in its place; {way_out}")


def write(project: Path, loop: Loop) -> list[str]:
    """Update dvc.yaml and params.yaml in the project; return this loop's stage names in order (its
    bootstrap stage included). A run of the same name another loop made is replaced only with
    loop.replace (--replace)."""
    dvc_path, params_path = project / "dvc.yaml", project / "params.yaml"
    existing, existing_params = _read_compiled(dvc_path), _read_compiled(params_path)
    if not loop.replace:
        check_replace(existing_params, loop, project)
    document, params = compile_loop(loop, project, existing.get("stages"), existing_params, existing.get("plots"))
    _write_if_changed(dvc_path, HEADER + dump(document))
    _write_if_changed(params_path, HEADER + dump(params))
    own = set(bootstrap_stage(loop, project))
    return [name for name in document["stages"] if name in own or _belongs_to(name, loop.name)]


def _read_compiled(path: Path) -> dict:
    """A file compile wrote before (the stages and params of the project's other runs, which it keeps);
    one that no longer parses is named, with the way out."""
    if not path.exists():
        return {}
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML any more (edited by hand, or cut short by a full disk); "
                        f"restore it (git checkout {path.name}) or delete it: each `selfimprove run` "
                        f"compiles its loop into it again") from None
    if document is not None and not isinstance(document, dict):
        raise UserError(f"{path}: expected a mapping, as compile writes it; restore it (git checkout "
                        f"{path.name}) or delete it and run your loops again")
    return document or {}


def _write_if_changed(path: Path, text: str) -> None:
    """Written whole or not at all (a temporary file, then a rename): a full disk or a kill mid-write
    never leaves a cut-short dvc.yaml or params.yaml."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    with atomic_file(path) as f:
        f.write(text)
