"""Small helpers shared by the stages: command-line arguments, params sections, JSONL, atomic writes,
and stage_main, which ends a failed stage in one line (selfimprove.core.errors)."""

from __future__ import annotations

import argparse
import importlib
import json
import re
from pathlib import Path
from typing import Iterable

import yaml

# re-exported: every stage ends in stage_main(main); it lives in core.errors, outside the stages' code
# fingerprints, since how a failure is worded changes no output
from selfimprove.core.errors import stage_main  # noqa: F401
from selfimprove.core.files import atomic_file  # re-exported: the stages' one atomic writer
from selfimprove.core.registry import BUILTIN_MODELS, STAGES, resolve


def iteration_stage_parser(doc: str, *paths: str) -> argparse.ArgumentParser:
    """The parser of an iteration stage: --params, --run, --iteration, then its own paths (--model ...)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--iteration", type=int, required=True)
    for name in paths:
        parser.add_argument(f"--{name}", required=True)
    return parser


def iteration_stage_args(doc: str, argv, *paths: str) -> argparse.Namespace:
    return iteration_stage_parser(doc, *paths).parse_args(argv)


def builtin_stage_args(doc: str, argv) -> tuple[dict, str]:
    """(settings, output directory) of a stage that builds a builtin model: --params, --section, --out."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--section", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    return read_section(args.params, args.section), args.out


def revision_for(run: dict, model: str) -> str | None:
    """A hub revision pins the loop's base model only; later iterations' models are local directories."""
    return run.get("model_revision") if model == run["model"] else None


ITERATION = re.compile(r"it\d+")  # a run's per-iteration sections: it0 (the base model's evaluation), it1, ...


def read_section(params_file: str, section: str) -> dict:
    """params.yaml[section] where section is dotted (scpo.it2.generate, or a whole run: scpo), with every
    stage's and builtin's settings complete (with_defaults)."""
    node = with_defaults(yaml.safe_load(Path(params_file).read_text()))
    for part in section.split("."):
        node = node[part]
    return node


def with_defaults(params: dict) -> dict:
    """params with each setting a stage (or a builtin's builder) declares and its section leaves out
    filled in with the declared default. The compiler leaves an omit_default setting at its default out
    of params.yaml, so that adding one re-ran nothing; reading fills it in here, once, and stage code
    indexes settings[key] without restating any default. Sections of stages no longer registered are
    left as they are."""
    for name, section in params.items():
        if not isinstance(section, dict):
            continue
        if name == "builtin":
            for model, settings in section.items():
                section[model] = _filled(settings, _builder_declarations(model))
            continue
        for key, stages in section.items():
            if ITERATION.fullmatch(str(key)) and isinstance(stages, dict):
                for stage, settings in stages.items():
                    declared = resolve("stage", stage).settings if stage in STAGES else {}
                    stages[stage] = _filled(settings, declared)
    return params


def _filled(settings, declared: dict):
    if not isinstance(settings, dict):
        return settings
    return {**settings, **{key: s.default for key, s in declared.items() if key not in settings}}


def _builder_declarations(model: str) -> dict:
    """The settings the builder stage of a builtin model declares ({} for a name no longer registered)."""
    if model not in BUILTIN_MODELS:
        return {}
    return getattr(importlib.import_module(resolve("builtin model", model).builder), "SETTINGS", {})


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Write via a temporary file and rename, so a killed stage never leaves half a file behind."""
    with atomic_file(path) as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def write_json(path: str | Path, data: dict) -> None:
    with atomic_file(path) as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
