"""`selfimprove plot RUN[@K] ... [--metric M ...] [-o FILE]`: metric curves across iterations, one panel per
metric, one line per run, with the 95% Wilson interval of every rate whose denominator was recorded
(its stage's Metric declaration names it) and each run's best iteration marked.

RUN@K draws iterations 0..K of the run; RUN all of them (RUN@best: up to its best). The metrics default
to the first run's headline (the metric RUN@best picks by) and, where the run has it, maj_at_k.
"""

from __future__ import annotations

from pathlib import Path

from selfimprove import results
from selfimprove.core import registry
from selfimprove.core.errors import UserError
from selfimprove.stages import report_charts


def series(project: Path, reference: str) -> tuple[str, dict[int, dict]]:
    """(run name, {iteration: metrics}) of a RUN or RUN@K reference, cut at K."""
    match = results.REF_RE.match(reference)
    if not match:
        raise UserError(f"{reference}: expected RUN, RUN@K or RUN@best, e.g. scpo or scpo@3")
    per_iteration = results.iteration_metrics(project, match["run"])
    if match["k"] is not None:
        last = int(results.resolve(project, reference)[0].split("@")[1])
        per_iteration = {k: m for k, m in per_iteration.items() if k <= last}
    return match["run"], per_iteration


def default_metrics(project: Path, run: str, per_iteration: dict[int, dict]) -> list[str]:
    """The headline, then the curves declared beside the first headline candidate that are not candidates
    themselves (evaluate's maj_at_k): the measure a loop moves and its sampled twin."""
    metric, _ = results.headline(project, run, per_iteration)
    candidates = registry.headlines()
    beside = [curve for stage in registry.stages() if candidates and candidates[0] in stage.curves
              for curve in stage.curves if curve not in candidates]
    wanted = [m for m in (metric, *beside) if m]
    return [m for m in dict.fromkeys(wanted) if any(m in figures for figures in per_iteration.values())]


def plot(project: Path, references: list[str], metrics: list[str], out: Path) -> Path:
    """Draw the curves and write them to out (PNG, or any format matplotlib knows by the suffix): a panel
    per metric, its name and unit on the y axis, the 95% interval band and the best iteration in the
    legend (selfimprove.stages.report_charts draws the panels, the HTML report's too)."""
    runs = [series(project, reference) for reference in references]
    metrics = metrics or default_metrics(project, *runs[0])
    if not metrics:
        raise UserError(f"plot: {runs[0][0]} has no headline metric yet; name one with --metric, e.g. --metric accuracy")
    missing = [m for m in metrics if not any(m in f for _, per in runs for f in per.values())]
    if missing:
        raise UserError(f"plot: no run here has the metric {missing[0]!r}; `selfimprove metrics RUN` lists them")
    plt = report_charts.pyplot()
    figure, axes = plt.subplots(len(metrics), 1, figsize=(7.5, 3.4 * len(metrics)), squeeze=False)
    marked = [(run, per_iteration, results._best_or_none(project, run, per_iteration)) for run, per_iteration in runs]
    for axis, metric in zip(axes[:, 0], metrics):
        report_charts.draw_metric(axis, metric, marked)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
