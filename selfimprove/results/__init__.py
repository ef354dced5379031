"""Reading results back: per-iteration metrics, and diffs between iterations or runs.

None of this imports torch: `selfimprove status` and `diff` must stay fast.
The iteration diff is our own because `dvc metrics diff` compares git revisions, not iterations.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from selfimprove.core import figures, registry
from selfimprove.core.errors import UserError
from selfimprove.stages.report import iteration_figures

# What each metric is (its row, its interval's denominator, whether it is a headline) is declared by the
# stage that writes it (selfimprove.core.stage.Metric), read here through the registry.
REF_RE = re.compile(r"^(?P<run>[a-z][a-z0-9_-]*)(?:@(?P<k>\d+|best))?$")


def iteration_metrics(project: Path, run: str) -> dict[int, dict]:
    """{iteration: metrics} from every metrics.json and pairs.json written so far."""
    base = project / "runs" / run
    if not base.is_dir():
        raise UserError(f"no run named {run!r} in {project / 'runs'}; `selfimprove status` lists runs")
    found: dict[int, dict] = {}
    for directory in base.glob("it*"):
        if directory.name[2:].isdigit() and (figures := iteration_figures(directory)):
            found[int(directory.name[2:])] = figures
    return dict(sorted(found.items()))


def resolve(project: Path, reference: str) -> tuple[str, dict]:
    """`RUN@K` -> that iteration's metrics; `RUN` -> its last iteration with metrics; `RUN@best` -> the
    iteration with the best headline metric (see best_iteration)."""
    match = REF_RE.match(reference)
    if not match:
        raise UserError(f"{reference}: expected RUN, RUN@K or RUN@best, e.g. scpo@3")
    per_iteration = iteration_metrics(project, match["run"])
    # An iteration counts as evaluated (RUN without @K names the last one) when it has a headline candidate.
    headlines = registry.headlines()
    evaluated = [k for k, m in per_iteration.items() if any(key in m for key in headlines) or match["k"] is not None]
    if match["k"] == "best":
        k = best_iteration(project, match["run"], per_iteration)["iteration"]
    elif match["k"] is None:
        if not evaluated:
            raise UserError(f"{reference}: no evaluated iteration yet; run the loop first")
        k = max(evaluated)
    else:
        k = int(match["k"])
        if k not in per_iteration:
            raise UserError(f"{reference}: iteration {k} has no metrics; available: "
                            + (", ".join(f"{match['run']}@{i}" for i in per_iteration) or "none"))
    return f"{match['run']}@{k}", per_iteration[k]


def headline(project: Path, run: str, per_iteration: dict[int, dict]) -> tuple[str | None, str]:
    """(the metric RUN@best picks by, "higher" or "lower"): the loop file's `best:` as compiled into
    params.yaml, else the first headline candidate the stages declare that the run reports (accuracy,
    pairwise accuracy, the decoding score), better as declared (higher). See figures.headline."""
    params_path = project / "params.yaml"
    section = ((yaml.safe_load(params_path.read_text()) or {}).get(run) or {}) if params_path.exists() else {}
    return figures.headline(section, per_iteration)


def best_iteration(project: Path, run: str, per_iteration: dict[int, dict] | None = None) -> dict:
    """{iteration, metric, value, better} of the run's best iteration by its headline metric (iteration 0,
    the base model, included; a tie goes to the earlier iteration)."""
    per_iteration = iteration_metrics(project, run) if per_iteration is None else per_iteration
    metric, better = headline(project, run, per_iteration)
    found = figures.best(per_iteration, metric, better)
    if found is None:
        shown = f"metric {metric!r}" if metric else f"headline metric ({', '.join(registry.headlines())})"
        raise UserError(f"{run}@best: no iteration of {run} has the {shown} yet; run the loop first, or set "
                        f"`best: METRIC` in its loop file")
    return found


def resolve_from(project: Path, start_from: str) -> str:
    """`--from RUN@best` as the RUN@K it stands for now (a compiled loop starts from a fixed iteration)."""
    run, k = start_from.split("@")
    return f"{run}@{best_iteration(project, run)['iteration']}" if k == "best" else start_from


# One copy of the interval code, below the layers that read it (the report stage reads it too).
wilson = figures.wilson
interval = figures.interval


def diff(project: Path, a: str, b: str) -> dict:
    """Rows of metric, both values, delta, and for rates their 95% intervals and whether those are separated."""
    name_a, left = resolve(project, a)
    name_b, right = resolve(project, b)
    declared = registry.metrics()
    keys = _ordered([k for k in {**left, **right} if _numeric(left.get(k)) or _numeric(right.get(k))], declared)
    rows = []
    for key in keys:
        x, y = left.get(key), right.get(key)
        delta = y - x if _numeric(x) and _numeric(y) else None
        row = {"metric": key, "a": x, "b": y, "delta": delta}
        ci_a, ci_b = interval(left, key, declared), interval(right, key, declared)
        if ci_a and ci_b:
            row.update(ci_a=list(ci_a), ci_b=list(ci_b), separated=ci_a[1] < ci_b[0] or ci_b[1] < ci_a[0])
        rows.append(row)
    return {"a": name_a, "b": name_b, "metrics": rows}


_numeric = figures.numeric
_ordered = figures.ordered


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def fmt_delta(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.4f}"
    return f"{value:+d}"


def print_metrics(project: Path, run: str, console) -> None:
    from rich.table import Table

    per_iteration = iteration_metrics(project, run)
    if not per_iteration:
        console.print(f"{run}: no metrics yet")
        return
    keys = _ordered([k for m in per_iteration.values() for k, v in m.items() if _numeric(v)])
    keys = list(dict.fromkeys(keys))
    best = _best_or_none(project, run, per_iteration)
    caption = (f"best: {run}@{best['iteration']} by {best['metric']} ({best['better']} is better) = "
               f"{fmt(best['value'])}; {run}@best names it" if best else None)
    table = Table(title=f"{run}: metrics per iteration (0 = base model)", caption=caption)
    table.add_column("metric")
    for k in per_iteration:
        marked = best is not None and k == best["iteration"]
        table.add_column(f"{run}@{k}" + (" (best)" if marked else ""), justify="right",
                         style="bold green" if marked else None)
    for key in keys:
        table.add_row(key, *(fmt(m.get(key)) for m in per_iteration.values()))
    console.print(table)


def _best_or_none(project: Path, run: str, per_iteration: dict[int, dict]) -> dict | None:
    try:
        return best_iteration(project, run, per_iteration)
    except UserError:
        return None  # nothing evaluated yet: no column to mark
