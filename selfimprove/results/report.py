"""`selfimprove report RUN [-o PATH]`: the run's HTML report, on demand, wherever the user wants it.

The run's report stage writes the same page as runs/RUN/report.html, a DVC output, at the end of every
`selfimprove run`; this writes it from what is there now (a run still going, a run whose page is not
checked out), reading exactly the files that stage reads: those on the command line of the run's compiled
report node in dvc.yaml, those that exist. No DVC output is touched.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from selfimprove.core.errors import UserError
from selfimprove.stages import report


def write(project: Path, run: str, out: Path) -> tuple[Path, str | None]:
    """(the page written, a note for the user or None)."""
    args = _node_args(project, run)
    inputs = [str(project / path) for path in args.inputs]
    figures = report.collect([path for path in inputs if path.endswith(".json")], args.iteration)
    loop_file = project / args.loop_file if args.loop_file and (project / args.loop_file).is_file() else None
    html = report.page(str(project / args.params), run, args.iteration, figures, inputs,
                       str(loop_file) if loop_file else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    # A node compiled by a version without the page names no records: say how to get them.
    section = (yaml.safe_load((project / args.params).read_text()) or {}).get(run) or {}
    note = None if args.html else (f"{run} was compiled by an older selfimprove: the page has its metrics only; "
                                   f"`selfimprove compile {section.get('loop_file') or 'LOOP'}` (or run) adds its "
                                   "records and training curves")
    return out, note


def _node_args(project: Path, run: str):
    """The report node's arguments, as the stage would parse them."""
    dvc_yaml = project / "dvc.yaml"
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {} if dvc_yaml.is_file() else {}
    node = stages.get(f"{run}-{report.STAGE.name}")
    if not node:
        runs = sorted(name.rsplit("-", 1)[0] for name in stages if name.endswith(f"-{report.STAGE.name}"))
        raise UserError(f"report {run}: no run named {run!r} is compiled in {dvc_yaml} ("
                        + (f"runs: {', '.join(runs)}" if runs else "no run yet") + "); run its loop first: "
                        "selfimprove run LOOP")
    if not (project / "runs" / run).is_dir():
        raise UserError(f"report {run}: runs/{run} does not exist yet; run the loop first (selfimprove run LOOP), "
                        "or fetch its outputs (selfimprove pull)")
    return report.parser().parse_args(shlex.split(node["cmd"])[3:])
