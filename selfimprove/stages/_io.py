"""Small helpers shared by the stages: command-line arguments, params sections, JSONL, atomic writes,
and the one-line error for a full disk."""

from __future__ import annotations

import argparse
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import yaml

from selfimprove.core.errors import DiskFull, is_disk_full, writing


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
    with atomic_file(path) as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def write_json(path: str | Path, data: dict) -> None:
    with atomic_file(path) as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_file(path: str | Path):
    """A text file written to `path.tmp` and renamed over `path` once complete. A failed write (a full
    disk) removes the temporary file and names `path` in the error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        try:
            with open(tmp, "w") as f:
                yield f
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def stage_main(main) -> None:
    """Run a stage's main; a UserError (bad input, an unhealthy judge) or a full disk ends it with one
    line, not a traceback, and a non-zero exit that `selfimprove run` reports with the stage's name."""
    import sys

    from selfimprove.core.errors import UserError

    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:
        if not is_disk_full(error):
            raise
        print(f"error: {DiskFull(getattr(error, 'filename', None) or 'the stage outputs')}", file=sys.stderr)
        sys.exit(2)
