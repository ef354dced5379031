"""Charts of a run with matplotlib: a metric across iterations with its 95% interval and the best
iteration marked (`selfimprove plot` draws these panels into a PNG, the HTML report inlines them as SVG),
and the training curves DVCLive wrote for each iteration.

Not a stage: the report stage and selfimprove.results.plot import it (it sits in the stages layer, below
results, so that the report stage can). matplotlib is imported inside the functions: reading results
must stay fast for the commands that draw nothing.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from selfimprove.core import figures

X_LABEL = "iteration (0 = base model)"


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display: files only); SVG text is text, not paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"
    return plt


def draw_metric(axis, metric: str, runs: list[tuple[str, dict[int, dict], dict | None]]) -> None:
    """One panel: metric across iterations, a line per run (name, {iteration: figures}, its best
    iteration as RUN@best picks it, or None), each with its 95% interval as a band where the metric is a
    rate with its denominator recorded. The best iteration is a star on the panel of the metric that
    picks it, a dotted line on the others."""
    for run, per_iteration, best in runs:
        points = [(k, m[metric], figures.interval(m, metric)) for k, m in per_iteration.items()
                  if figures.numeric(m.get(metric))]
        if not points:
            continue
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        line, = axis.plot(xs, ys, marker="o", label=run)
        bands = [(k, ci) for k, _, ci in points if ci]
        if bands:
            axis.fill_between([k for k, _ in bands], [ci[0] for _, ci in bands], [ci[1] for _, ci in bands],
                              color=line.get_color(), alpha=0.15, linewidth=0,
                              label="95% interval" if len(runs) == 1 else f"{run}: 95% interval")
        if best is None or best["iteration"] not in xs:
            continue
        k = best["iteration"]
        if best["metric"] == metric:
            axis.plot([k], [ys[xs.index(k)]], marker="*", markersize=14, color=line.get_color(), linestyle="none",
                      label=f"{run}@best (iteration {k})")
        else:
            axis.axvline(k, color=line.get_color(), linestyle=":", linewidth=1.2,
                         label=f"{run}@best (iteration {k}, by {best['metric']})")
    axis.set_title(metric)
    axis.set_xlabel(X_LABEL)
    axis.set_ylabel(figures.label(metric))
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    axis.xaxis.get_major_locator().set_params(integer=True)


def metric_svgs(run: str, per_iteration: dict[int, dict], metrics: list[str], best: dict | None) -> list[str]:
    """An SVG panel per metric, for the report."""
    plt = pyplot()
    found = []
    for metric in metrics:
        figure, axis = plt.subplots(figsize=(6.0, 3.2))
        draw_metric(axis, metric, [(run, per_iteration, best)])
        found.append(svg(figure, f"{run}-{metric}"))
    return found


def training_series(curves_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """{series: [(step, value)]} of DVCLive's plots/metrics/**.tsv in one iteration's curves directory
    (series named by their path: loss, train/loss, weighted/dpo)."""
    root = curves_dir / "plots" / "metrics"
    found = {}
    for path in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        name = path.relative_to(root).with_suffix("").as_posix()
        column = path.stem
        points = [(float(row["step"]), float(row[column])) for row in rows if _number(row.get(column))]
        if points:
            found[name] = points
    return found


def training_svg(run: str, per_iteration: dict[int, dict[str, list]], columns: int = 4) -> str | None:
    """Every training series in a panel of its own, a line per iteration; None when there are none."""
    names = sorted({name for series in per_iteration.values() for name in series})
    if not names:
        return None
    plt = pyplot()
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 2.5 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names):
        for k, series in sorted(per_iteration.items()):
            if name in series:
                steps, values = zip(*series[name])
                axis.plot(steps, values, marker="o" if len(steps) < 8 else None, markersize=3, label=f"iteration {k}")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(names):]:
        axis.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncol=min(len(labels), 8), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (2.5 * rows)))  # 0.4 inch on top for the legend
    return svg(figure, f"{run}-training")


def svg(figure, salt: str) -> str:
    """The figure as an <svg> element to inline in HTML: no XML header, no date, and ids that are the
    same on every run (a per-chart salt, so that two charts of one page never share an id)."""
    plt = pyplot()
    buffer = io.StringIO()
    with plt.rc_context({"svg.hashsalt": salt}):
        figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _number(text) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True
