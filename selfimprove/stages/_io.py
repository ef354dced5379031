"""Small helpers shared by the stages: command-line arguments, params sections, JSONL, atomic writes."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Iterable

import yaml


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


def read_section(params_file: str, section: str) -> dict:
    """params.yaml[section] where section is dotted (scpo.it2.generate)."""
    node = yaml.safe_load(Path(params_file).read_text())
    for part in section.split("."):
        node = node[part]
    return node


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Write via a temporary file and rename, so a killed stage never leaves half a file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def stage_main(main) -> None:
    """Run a stage's main; a UserError (bad input, an unhealthy judge) ends it with one line, not a
    traceback, and a non-zero exit that `selfimprove run` reports with the stage's name."""
    import sys

    from selfimprove.errors import UserError

    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
