"""Collect a run's per-iteration metrics into one file, and write the run's HTML report: the run's last stage.

    python -m selfimprove.stages.report --params params.yaml --run scpo --iteration 3 \
        --out runs/scpo/metrics.json --html runs/scpo/report.html --loop-file loops/scpo.yaml \
        runs/scpo/it0/metrics.json runs/scpo/it1/generate.json ... runs/scpo/it1/samples.jsonl ... \
        runs/scpo/it1/train_curves ...

Writes {"it0": {...}, "it1": {...}, ...}: each iteration's metrics files (the *.json on its command line:
evaluation, generation, pair, judge, reward, filter figures, whatever its stages wrote), merged, so that
`dvc metrics show` lists a whole run; curves.json, one record per iteration ({"iteration": K, ...every
numeric figure of the run, null where the iteration has none}: DVC plots only records with the same keys),
the run's plot for `dvc plots show` / `dvc plots diff` (x: iteration, y: the curves its stages declare);
and with --html the run's report page (selfimprove.stages.report_page), which also reads the records
(*.jsonl: prompts, samples, scores, pairs) and DVCLive's training curves (directories) on its command
line, the run's params section and the loop file. It reads exactly the files on its command line (and
params.yaml), its DVC dependencies. It is also the one target `selfimprove run` hands to `dvc repro`: DVC
then checks the run's stages once, instead of once per target (a no-op rerun in about 3 s, not 12).
"""

from __future__ import annotations

import json
from pathlib import Path

from selfimprove.core import registry
from selfimprove.core.files import atomic_file
from selfimprove.core.stage import Context, Stage, declaration
from selfimprove.stages._io import iteration_stage_parser, read_section, stage_main, write_json
from selfimprove.stages import report_page

CURVES = "train_curves"  # DVCLive's directory, as the train stage writes it (Stage.writes)


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
    """The report as DVC plots reads a series: one record per iteration with the run's numeric figures,
    every record with the same keys (None where an iteration lacks one; DVC draws no record of a file
    whose records differ in their keys)."""
    rows = [{"iteration": int(key[2:]), **{k: v for k, v in figures.items()
                                           if isinstance(v, (int, float)) and not isinstance(v, bool)}}
            for key, figures in sorted(report.items(), key=lambda item: int(item[0][2:]))]
    keys = ["iteration"] + sorted({key for row in rows for key in row} - {"iteration"})
    return [{key: row.get(key) for key in keys} for row in rows]


def page(params: str, run: str, iterations: int, report: dict, inputs: list[str], loop_file: str | None) -> str:
    """The run's HTML report from its collected figures and the records and curves among inputs."""
    per_iteration = {int(key[2:]): figures for key, figures in report.items()}
    paths = [Path(p) for p in inputs if (p.endswith(".jsonl") or Path(p).name == CURVES) and Path(p).exists()]
    return report_page.build(run, iterations, per_iteration, read_section(params, run), paths,
                             Path(loop_file) if loop_file else None)


def parser():
    """The stage's command line (`selfimprove report` reads the compiled node's with it too)."""
    found = iteration_stage_parser(__doc__, "out")
    found.add_argument("--html", help="the run's HTML report")
    found.add_argument("--loop-file", help="the loop file, shown in the HTML report")
    found.add_argument("inputs", nargs="*", help="the run's metrics files (*.json), records (*.jsonl) and "
                       "training curves (directories)")
    return found


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    report = collect([path for path in args.inputs if path.endswith(".json")], args.iteration)
    write_json(args.out, report)
    write_json(Path(args.out).with_name("curves.json"), curves(report))
    if args.html:
        html = page(args.params, args.run, args.iteration, report, args.inputs, args.loop_file)
        with atomic_file(args.html) as f:
            f.write(html)
    last = report[f"it{args.iteration}"]
    # The figure that says an iteration was evaluated, by kind of loop, as the stages declare it
    # (Metric.headline): accuracy, pairwise_accuracy, decoding_score.
    headline = next((key for key in registry.headlines() if key in last), None)
    print(f"report: {args.iteration} iteration(s)" + (f"; last {headline} {last[headline]:.3f}" if headline else ""))


@declaration
def read_artifacts(artifacts: dict[str, str]) -> list[str]:
    """What the page reads of an iteration ({artifact: path}, the latest writer of each, as Stage.writes
    names them): the records its table joins, prompt -> samples -> scores -> pairs (the pairs trained on:
    the filter's when one ran; Meta-Rewarding's judge pairs are among them), and DVCLive's curves.
    Evaluation's records are of the held-out set, not of these prompts."""
    joined = ("prompts", "samples", "votes", "scores", "pairs", CURVES)
    return [path for name, path in artifacts.items() if name in joined]


@declaration
def node(ctx: Context) -> dict:
    """Its deps are exactly what it reads: the run's metrics files, each iteration's records and training
    curves, and the loop file when it is a file of the project; its params the run's whole section (the
    page shows every setting). curves.json is an uncached output, drawn by dvc.yaml's top-level plots
    (the compiler gathers them from `plot` below): declared as a plot of the node too, DVC would draw it
    a second time, inferring its axes."""
    out, html, curves_file = ctx.outputs["report_stats"], ctx.outputs["page"], ctx.outputs["curves"]
    reads = [path for k in sorted(ctx.artifacts) for path in read_artifacts(ctx.artifacts[k])]
    loop_file = ([ctx.loop_file] if ctx.loop_file and not Path(ctx.loop_file).is_absolute()
                 and not ctx.loop_file.startswith("..") and (ctx.project / ctx.loop_file).is_file() else [])
    inputs = list(ctx.metrics) + reads
    cmd = (ctx.command(STAGE, out=out, html=html, **({"loop_file": loop_file[0]} if loop_file else {}))
           + "".join(f" {path}" for path in inputs))
    return ctx.node(STAGE, cmd=cmd, deps=inputs + loop_file, params=[ctx.run],
                    outs=[html, {curves_file: {"cache": False}}], metrics=[out])


@declaration
def plot(ctx: Context) -> dict:
    """The run's top-level DVC plot: its curves file, x the iteration, y the curves its stages declare
    (a stage's own plots take a single y)."""
    return {ctx.outputs["curves"]: {"x": "iteration", "y": list(ctx.curves) or ["iteration"],
                                    "title": f"{ctx.run}: per iteration (0 = base model)"}}


STAGE = Stage("report", {}, node=node, writes={"report_stats": "metrics.json", "curves": "curves.json",
                                               "page": "report.html"}, scope="run", plot=plot,
              # The page's template is a file of the package: code of this stage, fingerprinted by path
              # (as a builtin prompt is), so that editing it re-runs the report.
              plugins=lambda ctx: [("module", f"{report_page.TEMPLATE_DIR}/{name}")
                                   for name in report_page.TEMPLATE_FILES])


if __name__ == "__main__":
    stage_main(main)
