"""Collect a run's per-iteration metrics into one file, the run's last stage.

    python -m selfimprove.stages.report --params params.yaml --run scpo --iteration 3 \
        --out runs/scpo/metrics.json runs/scpo/it0/metrics.json runs/scpo/it1/generate.json ...

Writes {"it0": {...}, "it1": {...}, ...}: each iteration's metrics files (evaluation, generation, pair,
judge, reward, filter figures: whatever its stages wrote), merged, so that `dvc metrics show` lists a
whole run; and curves.json, one record per iteration ({"iteration": K, ...its numeric figures}), the
run's plot for `dvc plots show` / `dvc plots diff` (x: iteration, y: the curves its stages declare). It reads exactly the files on its command line, its DVC dependencies. It is also the one
target `selfimprove run` hands to `dvc repro`: DVC then checks the run's stages once, instead of once per
target (a no-op rerun in about 3 s, not 12).
"""

from __future__ import annotations

import json
from pathlib import Path

from selfimprove.core import registry
from selfimprove.core.stage import Context, Stage, declaration
from selfimprove.stages._io import iteration_stage_parser, stage_main, write_json


def iteration_figures(iteration_dir: Path, names: list[str] | None = None) -> dict:
    """One iteration's metrics files merged (all of its *.json where names is None); {} if none."""
    paths = sorted(iteration_dir.glob("*.json")) if names is None else [iteration_dir / n for n in names]
    figures = {}
    for path in paths:
        if path.exists():
            figures.update(json.loads(path.read_text()))
    return figures


def collect(files: list[str], iterations: int) -> dict:
    """{"itK": merged figures} from metrics files named runs/<run>/itK/<name>.json."""
    report = {f"it{k}": {} for k in range(iterations + 1)}
    for path in map(Path, files):
        if path.exists():
            report.setdefault(path.parent.name, {}).update(json.loads(path.read_text()))
    return report


def curves(report: dict) -> list[dict]:
    """The report as DVC plots reads a series: one record per iteration with its numeric figures."""
    return [{"iteration": int(key[2:]), **{k: v for k, v in figures.items()
                                           if isinstance(v, (int, float)) and not isinstance(v, bool)}}
            for key, figures in sorted(report.items(), key=lambda item: int(item[0][2:]))]


def main(argv=None) -> None:
    parser = iteration_stage_parser(__doc__, "out")
    parser.add_argument("metrics", nargs="*", help="the run's metrics files")
    args = parser.parse_args(argv)
    report = collect(args.metrics, args.iteration)
    write_json(args.out, report)
    write_json(Path(args.out).with_name("curves.json"), curves(report))
    last = report[f"it{args.iteration}"]
    # The figure that says an iteration was evaluated, by kind of loop, as the stages declare it
    # (Metric.headline): accuracy, pairwise_accuracy, decoding_score.
    headline = next((key for key in registry.headlines() if key in last), None)
    print(f"report: {args.iteration} iteration(s)" + (f"; last {headline} {last[headline]:.3f}" if headline else ""))


@declaration
def node(ctx: Context) -> dict:
    out = ctx.outputs["report_stats"]
    node = ctx.node(STAGE, cmd=ctx.command(STAGE, out=out) + "".join(f" {path}" for path in ctx.metrics),
                    deps=list(ctx.metrics), metrics=[out])
    node["plots"] = [{ctx.outputs["curves"]: {"cache": False}}]  # drawn by dvc.yaml's top-level plots (compiler)
    return node


@declaration
def plot(ctx: Context) -> dict:
    """The run's top-level DVC plot: its curves file, x the iteration, y the curves its stages declare
    (a stage's own plots take a single y)."""
    return {ctx.outputs["curves"]: {"x": "iteration", "y": list(ctx.curves) or ["iteration"],
                                    "title": f"{ctx.run}: per iteration (0 = base model)"}}


STAGE = Stage("report", {}, node=node, writes={"report_stats": "metrics.json", "curves": "curves.json"}, scope="run",
              plot=plot)


if __name__ == "__main__":
    stage_main(main)
