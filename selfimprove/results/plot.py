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
    """Draw the curves and write them to out (PNG, or any format matplotlib knows by the suffix)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    runs = [series(project, reference) for reference in references]
    metrics = metrics or default_metrics(project, *runs[0])
    if not metrics:
        raise UserError(f"plot: {runs[0][0]} has no headline metric yet; name one with --metric, e.g. --metric accuracy")
    missing = [m for m in metrics if not any(m in f for _, per in runs for f in per.values())]
    if missing:
        raise UserError(f"plot: no run here has the metric {missing[0]!r}; `selfimprove metrics RUN` lists them")
    figure, axes = plt.subplots(len(metrics), 1, figsize=(7.5, 3.2 * len(metrics)), squeeze=False)
    for axis, metric in zip(axes[:, 0], metrics):
        for run, per_iteration in runs:
            _draw(axis, run, metric, per_iteration, _best(project, run, per_iteration, metric))
        axis.set_title(metric)
        axis.set_xlabel("iteration (0 = base model)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        axis.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def _draw(axis, run: str, metric: str, per_iteration: dict[int, dict], best: int | None) -> None:
    points = [(k, m[metric], results.interval(m, metric)) for k, m in per_iteration.items()
              if results._numeric(m.get(metric))]
    if not points:
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    line, = axis.plot(xs, ys, marker="o", label=run)
    bands = [(k, ci) for k, _, ci in points if ci]
    if bands:
        axis.fill_between([k for k, _ in bands], [ci[0] for _, ci in bands], [ci[1] for _, ci in bands],
                          color=line.get_color(), alpha=0.15, linewidth=0)
    if best is not None and best in xs:
        axis.plot([best], [ys[xs.index(best)]], marker="*", markersize=14, color=line.get_color(), linestyle="none",
                  label=f"{run}@best ({best})")


def _best(project: Path, run: str, per_iteration: dict[int, dict], metric: str) -> int | None:
    """The run's best iteration, marked on its headline metric's panel only."""
    found = results._best_or_none(project, run, per_iteration)
    return found["iteration"] if found and found["metric"] == metric else None
