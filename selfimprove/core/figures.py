"""The figures stages write, read as numbers: 95% intervals of rates, the order of rows, the best
iteration of a run, an axis label. One copy for every reader: `selfimprove metrics`, `diff`, `plot`,
RUN@best (selfimprove.results) and the run's HTML report (selfimprove.stages.report), which sits below
results in the package's layers and so cannot import it.

What each figure is (its denominator, whether higher is better, its unit) is declared by the stage that
writes it (selfimprove.core.stage.Metric) and read through the registry; nothing here names a metric.
"""

from __future__ import annotations

import math

from selfimprove.core import registry


def numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def interval(metrics: dict, key: str, declared: list | None = None) -> tuple[float, float] | None:
    """The 95% interval of a rate metric (one its stage declares with a denominator: measured on n items,
    so a delta can be read as real or noise), when its denominator was recorded."""
    declared = registry.metric(key, declared)
    n = metrics.get(declared.denominator) if declared and declared.denominator else None
    if not numeric(metrics.get(key)) or not n:
        return None
    return wilson(metrics[key] * n, n)


def ordered(keys: list[str], declared: list | None = None) -> list[str]:
    """The metrics the stages place (Metric.order) first, in their order; any other numeric metric follows
    by name."""
    placed = [m.name for m in (registry.metrics() if declared is None else declared) if m.order is not None]
    return [k for k in placed if k in keys] + sorted(k for k in keys if k not in placed)


def headline(section: dict, per_iteration: dict[int, dict]) -> tuple[str | None, str]:
    """(the metric RUN@best picks by, "higher" or "lower"), from the run's params section: its loop file's
    `best:` as compiled, else the first headline candidate the stages declare that the run reports
    (accuracy, pairwise accuracy, the decoding score), better as declared (higher)."""
    configured = section.get("best") if isinstance(section, dict) else None
    if isinstance(configured, dict) and configured.get("metric"):
        return configured["metric"], configured.get("better", "higher")
    found = next((key for key in registry.headlines() if any(key in m for m in per_iteration.values())), None)
    declared = registry.metric(found) if found else None
    return found, (declared.better if declared and declared.better else "higher")


def best(per_iteration: dict[int, dict], metric: str | None, better: str) -> dict | None:
    """{iteration, metric, value, better} of the iteration with the best value of metric (iteration 0,
    the base model, included; a tie goes to the earlier iteration); None if no iteration has it."""
    scored = {k: m[metric] for k, m in per_iteration.items() if metric and numeric(m.get(metric))}
    if not scored:
        return None
    target = (max if better == "higher" else min)(scored.values())
    k = min(i for i in scored if scored[i] == target)
    return {"iteration": k, "metric": metric, "value": scored[k], "better": better}


def unit(key: str, declared: list | None = None) -> str:
    """What a figure is measured in, for an axis: its declared unit, else, for a rate, the share of its
    denominator ("fraction of problems"); "" when neither is known."""
    found = registry.metric(key, declared)
    if found is None:
        return ""
    return found.unit or (f"fraction of {found.denominator}" if found.denominator else "")


def label(key: str, declared: list | None = None) -> str:
    """An axis label: the metric's name and its unit, e.g. "accuracy (fraction of problems)"."""
    measured = unit(key, declared)
    return f"{key} ({measured})" if measured else key
