"""Loop files: load, override, validate, resolve per iteration.

A loop file is data, loaded with PyYAML's safe loader (it never runs code). Its stages, their settings
and the checks on them come from the stages' own declarations (selfimprove.core.registry.STAGES); nothing
here knows a stage by name. Validation collects every problem at once; each one names file:line, the
key path and the fix, e.g.

    loops/scpo.yaml:14: stages.generate.temprature: unknown key; did you mean 'temperature'?

Each iteration runs a pipeline of stages: the loop's `pipeline:` (changed per iteration through
`schedule: {K: {pipeline: [...]}}`), or, without one, the stages whose declarations say the iteration's
settings call for them, in registry order.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from selfimprove.tasks import data as data_section
from selfimprove.backends.config import backend_params, check_backend, check_engine
from selfimprove.core.errors import UserError
from selfimprove.core.registry import BACKENDS, DEFAULT_BACKEND, STAGES, UnknownName, resolve, stages
from selfimprove.core.stage import tracked_values
from selfimprove.loop import references, yamlfile
from selfimprove.loop.pipelines import (check_inputs, check_pipeline, check_stages, check_unused_sections,
                                       derived_pipeline)
from selfimprove.tasks.datafile import check_data_file
from selfimprove.core.validation import (Problems, check_section, check_values, defaults, did_you_mean, key_lines, scalar,
                                    shown)

TOP_LEVEL = {"name", "description", "model", "model_revision", "data", "iterations", "seed", "bootstrap", "stages",
             "schedule", "from", "backend", "chat_template", "pipeline", "best", "stop", "engine", "warm_engine",
             *BACKENDS}
REQUIRED = ["name", "model", "data", "iterations"]
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
FROM_RE = re.compile(r"^([a-z][a-z0-9_-]*)@(\d+|best)$")
BETTER = ("higher", "lower")
RESERVED_NAMES = ("code", "builtin")  # params.yaml sections that are not runs
DATA_FILES = (".jsonl", ".json", ".parquet")  # data.prompts / data.eval naming a file of the project
MAX_NAME = 64  # a run name is a directory, a prefix of every stage name and a params section


@dataclass
class Loop:
    """A validated loop: its raw settings and, per iteration, the resolved settings of every stage and
    the pipeline it runs."""

    path: Path
    name: str
    model: str
    model_revision: str | None
    data: dict[str, Any]
    iterations: int
    bootstrap: dict[str, Any]
    start_from: str | None
    per_iteration: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    pipelines: dict[int, list[str]] = field(default_factory=dict)
    backend: str = DEFAULT_BACKEND
    chat_template: bool = False
    backend_settings: dict[str, Any] = field(default_factory=dict)  # the vllm: or openai: section, resolved
    engine: str = "stage"  # warm: one vLLM server for the run (selfimprove.pipeline.engine_broker); not a param
    engine_settings: dict[str, Any] = field(default_factory=dict)  # the warm_engine: section, resolved
    best: dict[str, str] | None = None  # what RUN@best maximises: {metric, better}; None: the loop kind's headline
    stop: list[dict] = field(default_factory=list)  # stop rules (selfimprove.loop.stop), checked after each iteration
    notes: list[str] = field(default_factory=list)  # what validate found not here yet (a hub model to download)
    replace: bool = False  # --replace: compile over a run of the same name that another loop file made

    def tracked(self) -> list[str]:
        """The stages whose settings the run's params hold in every iteration: those some iteration runs,
        in registry order."""
        used = {name for pipeline in self.pipelines.values() for name in pipeline}
        return [name for name in STAGES if name in used]

    def base_stages(self) -> list:
        """The stages iteration 0 runs on the base model: those of the loop's pipelines that declare
        base_iteration (an evaluation), so a loop that evaluates another way does not run evaluate."""
        used = set(self.tracked())
        return [stage for stage in stages() if stage.base_iteration and stage.name in used]

    def base_iteration_of(self, stage: str) -> int:
        """The iteration whose settings a stage runs with on the base model: the first whose pipeline has
        it (so an evaluation that only a later iteration names is configured as it is there)."""
        return next((k for k in sorted(self.pipelines) if stage in self.pipelines[k]), 1)


def parse_override(text: str) -> tuple[tuple, Any]:
    """Parse a --set KEY=VALUE. A stage name may stand alone: generate.n=16 means stages.generate.n=16."""
    if "=" not in text:
        raise UserError(f"--set {text}: expected KEY=VALUE, e.g. --set generate.n=16")
    key, raw = text.split("=", 1)
    path = tuple(scalar(part) for part in key.strip().split("."))
    if path[0] in STAGES:
        path = ("stages",) + path
    return path, yamlfile.load(raw, f"--set {text}", numbered=False)[0] if raw.strip() else ""


def _apply_override(raw: dict, path: tuple, value: Any) -> None:
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {'.'.join(map(str, path))}: {part} is not a mapping in the loop file")
    node[path[-1]] = value


def load_loop(path: str | Path, overrides: list[str] = (), made_files: bool = False) -> Loop:
    """Load, override and validate a loop file; raise UserError listing every problem. made_files: also
    refuse a path under runs/ that another step must make first (validate and run; compiling needs none)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such loop file; the shipped ones are in loops/ (e.g. loops/scpo.yaml)")
    raw, node = yamlfile.load(yamlfile.decode(path.read_bytes(), str(path)), str(path))
    if not isinstance(raw, dict):
        raise UserError(f"{path}:1: a loop file is a mapping with at least: {', '.join(REQUIRED)}")
    lines = key_lines(node) if node is not None else {}
    given = {}
    for text_override in overrides:
        key_path, value = parse_override(text_override)
        _apply_override(raw, key_path, value)
        given[key_path] = ".".join(map(str, key_path))  # never its value: it may be a pasted key
    problems = Problems(str(path), lines, given)
    loop = _validate(raw, path, problems, made_files)
    if problems.items:
        raise UserError(*dict.fromkeys(problems.items))
    return loop


def _validate(raw: dict, path: Path, problems: Problems, made_files: bool = False) -> Loop:
    for key in raw:
        if key not in TOP_LEVEL:
            problems.add((key,), did_you_mean(key, TOP_LEVEL))
    for key in REQUIRED:
        if key not in raw:
            problems.add((), f"missing required key '{key}'; see loops/scpo.yaml for an example")
    name = raw.get("name", "")
    if isinstance(name, str) and len(name) > MAX_NAME and NAME_RE.match(name):
        problems.add(("name",), f"is {len(name)} characters long; a run name has at most {MAX_NAME} (it names "
                     "directories, DVC stages and params sections), e.g. scpo-lr3")
    elif "name" in raw and not (isinstance(name, str) and NAME_RE.match(name)):
        problems.add(("name",), f"{name!r} is not a run name; use lowercase letters, digits, '-' and '_', e.g. scpo")
    elif name in RESERVED_NAMES:
        problems.add(("name",), f"{name!r} is reserved: params.yaml has a section of that name; choose another run name")
    iterations = raw.get("iterations", 1)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        problems.add(("iterations",), f"expected a whole number >= 1, got {iterations!r}")
        iterations = 1
    start_from = raw.get("from")
    if start_from is not None and not (isinstance(start_from, str) and FROM_RE.match(start_from)):
        problems.add(("from",), f"expected RUN@K or RUN@best (e.g. scpo@2), got {start_from!r}")
    best = _best(raw.get("best"), problems)
    from selfimprove.loop.stop import check_metric_names, check_rules

    stop = check_rules(raw.get("stop"), problems)
    data = {**defaults(data_section.SETTINGS),
            **check_section(raw.get("data", {}), data_section.SETTINGS, ("data",), problems)}
    check_values(data, data_section.SETTINGS, ("data",), problems, set())
    _check_data_files(data, problems)
    model = raw.get("model")
    if "model" in raw and not (isinstance(model, str) and model.strip()):
        problems.add(("model",), "is empty; name a builtin (builtin:tiny-arith), a model directory or a hub id")
    model = str(model or "")
    bootstrap = _bootstrap(model, raw.get("bootstrap", {}), problems)
    notes: list[str] = []
    per_iteration, pipelines = _iterations(raw, iterations, problems, notes,
                                           shortened=("iterations",) in problems.overrides)
    backend, chat_template, backend_settings = check_backend(raw, problems)
    engine, engine_settings = check_engine(raw, backend, problems)
    check_metric_names(best, stop, pipelines, problems)
    if not problems.items:  # files outside the loop file, once the loop itself is sound
        from selfimprove.loop import prechecks

        references.check_references(raw, model, per_iteration, pipelines, problems, notes)
        prechecks.check_vocabulary(model, bootstrap, data, problems)
        if made_files:
            prechecks.check_made_paths(path, name, model, per_iteration, pipelines, problems)
    for k, settings in per_iteration.items():
        for stage in pipelines.get(k, []):
            declared = resolve("stage", stage)
            if declared.check:
                declared.check(settings, references.AtOrigin(problems, raw, k),
                               {"backend": backend, "chat_template": chat_template, "pipeline": pipelines[k]})
    return Loop(path=path, name=name, model=model, model_revision=raw.get("model_revision"), data=data,
                iterations=iterations, bootstrap=bootstrap, start_from=start_from, per_iteration=per_iteration, best=best, stop=stop,
                pipelines=pipelines, backend=backend, chat_template=chat_template, backend_settings=backend_settings,
                engine=engine, engine_settings=engine_settings, notes=notes)


def _check_data_files(data: dict, problems: Problems) -> None:
    """data.prompts and data.eval are given; a file of the project (not a builtin or a dataset id) is
    inside it, exists, and reads as the loader will read it."""
    for key in ("prompts", "eval"):
        spec = data.get(key)
        if not spec:
            problems.add(("data",), f"missing data.{key}; e.g. data: {{prompts: builtin:arith/train, eval: builtin:arith/test}}")
            continue
        if not (isinstance(spec, str) and Path(spec).suffix.lower() in DATA_FILES):
            continue
        if outside := references.outside_project(spec):
            problems.add(("data", key), outside)
        elif not Path(spec).is_file():
            problems.add(("data", key), f"{spec}: no such file (paths are relative to the project directory)")
        else:
            for problem in check_data_file(spec, data["question_field"], data["answer_field"],
                                           need_answers=False if key == "prompts" else None):
                problems.add(("data", key), problem)


def _best(value: Any, problems: Problems) -> dict[str, str] | None:
    """`best: maj_at_k` or `best: {metric: li_violation_rate, better: lower}`: the metric RUN@best picks the
    iteration by (default: the loop kind's headline, higher is better)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"metric": value}
    if not isinstance(value, dict) or not isinstance(value.get("metric"), str) or not value["metric"]:
        problems.add(("best",), f"expected a metric name or {{metric: NAME, better: higher|lower}}, got {value!r}")
        return None
    for key in value:
        if key not in ("metric", "better"):
            problems.add(("best", key), did_you_mean(key, ("metric", "better")))
    better = value.get("better", "higher")
    if better not in BETTER:
        problems.add(("best", "better"), f"expected higher or lower, got {better!r}")
    return {"metric": value["metric"], "better": better}


def _bootstrap(model: str, values: Any, problems: Problems) -> dict:
    """The settings a builtin model is built with: its builder's defaults, the builtin's own, the loop's
    `bootstrap:` section (for bootstrapped builtins; a converted one has nothing to set)."""
    if not model.startswith("builtin:"):
        return {}
    try:
        builtin = resolve("builtin model", model.split(":", 1)[1])
    except UnknownName as error:
        problems.add(("model",), str(error))
        return {}
    if not builtin.checked:
        return dict(builtin.settings)
    settings = _builder_settings(builtin)
    resolved = {**defaults(settings), **builtin.settings, **check_section(values or {}, settings, ("bootstrap",), problems)}
    check_values(resolved, settings, ("bootstrap",), problems, set())
    return resolved


def _builder_settings(builtin) -> dict:
    import importlib

    return importlib.import_module(builtin.builder).SETTINGS


def builtin_name(loop: Loop) -> str | None:
    """The builtin model the loop's model names, as its `bootstrap:` section builds it: the builtin's own
    name at its own settings, a variant's name otherwise (selfimprove.core.stage.Builtin.variant)."""
    if not loop.model.startswith("builtin:"):
        return None
    found = resolve("builtin model", loop.model.split(":", 1)[1])
    return found.variant(loop.bootstrap, defaults(_builder_settings(found)) if found.checked else {})


def _iterations(raw: dict, iterations: int, problems: Problems, notes: list[str],
                shortened: bool = False) -> tuple[dict, dict]:
    """(per iteration: every stage's resolved settings, per iteration: its pipeline)."""
    base = check_stages(raw.get("stages", {}), ("stages",), problems)
    top_pipeline = check_pipeline(raw["pipeline"], ("pipeline",), problems) if "pipeline" in raw else None
    schedule = raw.get("schedule") or {}
    if not isinstance(schedule, dict):
        problems.add(("schedule",), "must map an iteration number to stage overrides, e.g. 2: {pairs: {min_votes: 0.7}}")
        schedule = {}
    for key in schedule:
        if isinstance(key, bool) or not isinstance(key, int) or key < 1:
            problems.add(("schedule", key), f"{shown(key)} is not an iteration number; use 1, 2, ...")
        elif key > iterations and not shortened:  # `--set iterations=2` on a 3-iteration loop may leave some
            problems.add(("schedule", key), f"the loop has {iterations} iterations, so this entry would never apply; "
                         f"remove it or raise iterations to {key}")
    per_iteration, pipelines, seen = {}, {}, set()
    for k in range(1, iterations + 1):
        entry = schedule.get(k) or {}
        entry = entry if isinstance(entry, dict) else {}
        pipeline = (check_pipeline(entry["pipeline"], ("schedule", k, "pipeline"), problems)
                    if "pipeline" in entry else top_pipeline)
        override = check_stages({s: v for s, v in entry.items() if s != "pipeline"}, ("schedule", k), problems)
        if k in schedule and not isinstance(schedule[k], dict):
            problems.add(("schedule", k), "must map stage names to settings, e.g. 2: {pairs: {min_votes: 0.7}}")
        settings = {stage.name: {**stage.defaults(), **base.get(stage.name, {}), **override.get(stage.name, {})}
                    for stage in stages()}
        for stage in stages():
            check_values(settings[stage.name], stage.settings, ("stages", stage.name), problems, seen,
                         origin=lambda key, stage=stage.name, k=k: references.origin(raw, k, stage, key))
        per_iteration[k] = settings
        try:
            pipelines[k] = pipeline if pipeline is not None else derived_pipeline(settings)
        except UnknownName:  # a misnamed rule, already reported with its line
            pipelines[k] = []
        where = ("schedule", k, "pipeline") if "pipeline" in entry else ("pipeline",)
        check_inputs(pipelines[k], settings, where, problems)
    check_unused_sections(_sections(raw, schedule), pipelines, problems, notes)
    return per_iteration, pipelines


def _sections(raw: dict, schedule: dict) -> dict[tuple, Any]:
    """The key path of every stage section the loop gives (under stages:, or a schedule entry) -> it."""
    given = {("stages", stage): section for stage, section in raw["stages"].items()} \
        if isinstance(raw.get("stages"), dict) else {}
    for k, entry in schedule.items():
        if isinstance(entry, dict):
            given.update({("schedule", k, stage): section for stage, section in entry.items() if stage != "pipeline"})
    return given


def resolved_params(loop: Loop) -> dict:
    """The params a compiled run tracks in params.yaml: one section per iteration and stage that some
    iteration runs, and the backend's settings where the loop chooses one."""
    params = {"model": loop.model, "model_revision": loop.model_revision,
              "data": copy.deepcopy(tracked_values(data_section.SETTINGS, loop.data)),
              **backend_params(loop)}
    variant = builtin_name(loop)
    if variant and variant != loop.model.split(":", 1)[1] and not loop.start_from:
        params["builtin"] = variant  # its base model's directory (RUN@0); no stage tracks it
    if loop.best:  # read by RUN@best (selfimprove.results); no stage tracks it, so changing it re-runs nothing
        params["best"] = dict(loop.best)
    tracked = loop.tracked()
    for k, settings in loop.per_iteration.items():
        params[f"it{k}"] = {stage: copy.deepcopy(resolve("stage", stage).tracked(settings[stage])) for stage in tracked}
    # Iteration 0 is the base model; only the stages that run on it do, each with the settings of the first
    # iteration whose pipeline has it (iteration 1's, for an evaluate every iteration runs).
    wanted: dict[str, int] = {}  # stage -> the iteration whose settings iteration 0 uses for it
    for base in loop.base_stages():
        k = loop.base_iteration_of(base.name)
        for name in [base.name] + [other for other in base.settings_of if other in tracked]:
            wanted.setdefault(name, k)
    params["it0"] = {stage: copy.deepcopy(resolve("stage", stage).tracked(loop.per_iteration[wanted[stage]][stage]))
                     for stage in STAGES if stage in wanted}
    return params
