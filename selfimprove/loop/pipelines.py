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
    if not value:
        problems.add(path, "is empty; name the stages an iteration runs, e.g. pipeline: [generate, vote, pairs, "
                     "train, evaluate]")
        return None
    unknown = [name for name in value if name not in STAGES or resolve("stage", name).scope != "iteration"]
    for name in unknown:
        problems.add(path, f"{name!r} is not a stage of an iteration; {suggestion(name, STAGES)}")
    for name in dict.fromkeys(name for name in value if value.count(name) > 1):
        problems.add(path, f"{name} is listed {value.count(name)} times; an iteration runs each stage once "
                     "(its outputs have one name), so list it once")
    return None if unknown or len(set(value)) < len(value) else list(value)


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


def check_unused_sections(given: dict[tuple, dict], pipelines: dict[int, list[str]], problems: Problems,
                          notes: list[str]) -> None:
    """Refuse settings of a stage no iteration runs: they would change nothing (params hold only the stages
    some iteration runs, so a stage that reads another's settings, settings_of, reads its defaults then),
    and a user who wrote them meant them to. given: the key path of each stage section -> its settings.
    One use is real: a loop file run with another pipeline (`--set pipeline=[...]`, a documented variant)
    leaves the file's sections for the stages it drops; those are a note, not a problem."""
    used = {name for pipeline in pipelines.values() for name in pipeline}
    runs = sorted({tuple(p) for p in pipelines.values()})
    shown = "; ".join(", ".join(p) for p in runs) or "none"
    pipeline_set = any(key[-1] == "pipeline" for key in problems.overrides)
    for path, section in given.items():
        stage = path[-1]
        if stage not in STAGES or stage in used or section is None:
            continue
        from_set = any(key[:len(path)] == path for key in problems.overrides)
        if pipeline_set and not from_set:
            notes.append(f"{'.'.join(map(str, path))}: settings of {stage}, which the --set pipeline does not run")
            continue
        problems.add(path, f"no iteration runs {stage} (the pipeline{'s' if len(runs) > 1 else ''}: {shown}), "
                     f"so these settings would change nothing; remove them or add {stage} to pipeline:")
