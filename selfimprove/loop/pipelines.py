"""An iteration's pipeline in a loop file: the stages it names (or, without `pipeline:`, those its settings
call for), each stage's section checked against its declaration, and every stage's inputs written by an
earlier stage of the same iteration."""

from __future__ import annotations

from typing import Any

from selfimprove.core.registry import STAGES, UnknownName, resolve, stages, suggestion
from selfimprove.core.validation import Problems, check_section, did_you_mean


def derived_pipeline(settings: dict) -> list[str]:
    """The stages an iteration's settings call for, in registry order (a loop without `pipeline:`)."""
    return [stage.name for stage in stages() if stage.scope == "iteration" and stage.included(settings)]


def check_stages(values: Any, path: tuple, problems: Problems) -> dict:
    if not isinstance(values, dict):
        problems.add(path, "must map stage names to settings, e.g. generate: {n: 8}")
        return {}
    checked = {}
    for stage, settings in values.items():
        if stage not in STAGES:
            problems.add(path + (stage,), did_you_mean(stage, STAGES))
            continue
        checked[stage] = check_section(settings or {}, resolve("stage", stage).settings, path + (stage,), problems)
    return checked


def check_pipeline(value: Any, path: tuple, problems: Problems) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.add(path, "must be a list of stage names, e.g. pipeline: [generate, vote, pairs, train, evaluate]")
        return None
    unknown = [name for name in value if name not in STAGES or resolve("stage", name).scope != "iteration"]
    for name in unknown:
        problems.add(path, f"{name!r} is not a stage of an iteration; {suggestion(name, STAGES)}")
    return None if unknown else list(value)


def check_inputs(pipeline: list[str], settings: dict, path: tuple, problems: Problems) -> None:
    """Each stage's inputs come from an earlier stage of the pipeline (the policy model is always there),
    and each stage's work reaches something: a later stage reads what it writes, or it writes a model or
    a metrics file. (`selfimprove run` reproduces what the run's report depends on; a stage whose output
    nothing reads would never run.)"""
    available, writers = {"model"}, {}
    read = set()
    for name in pipeline:
        stage = resolve("stage", name)
        try:
            required = stage.required(settings)
        except UnknownName:
            return
        for artifact in required:
            if artifact not in available:
                makers = [s.name for s in stages() if artifact in s.writes]
                problems.add(path, f"{name} needs {artifact}, which no earlier stage writes; put "
                             f"{' or '.join(makers) or 'a stage that writes it'} before {name}")
        read |= {(writers.get(a), a) for a in required + tuple(stage.optional_reads)}
        available |= set(stage.writes)
        writers.update({artifact: name for artifact in stage.writes})
    for name in pipeline:
        writes = resolve("stage", name).writes
        if not any(a == "model" or is_metrics(a) or (name, a) in read for a in writes):
            readers = sorted({s.name for s in stages() for a in writes if a in s.required(settings) + s.optional_reads})
            problems.add(path, f"{name} writes {', '.join(writes)}, which no later stage reads; remove {name} or "
                         f"put {' or '.join(readers) or 'a stage that reads it'} after it")


def is_metrics(artifact: str) -> bool:
    """Artifacts named metrics or <stage>_stats are metrics files, which the run's report reads."""
    return artifact == "metrics" or artifact.endswith("_stats")
