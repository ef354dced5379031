"""Stop rules (`stop:` in a loop file): end a loop after an iteration whose figures say that going on would
do harm or cost too much. Self-improvement loops go wrong in known ways: on the landed judge loops the
held-out accuracy rose and then fell once the judge's agreement with the truth on the model's own
samples had dropped to chance (README, "Self-Rewarding, Meta-Rewarding and TPO, in miniature").

    stop:
      - {metric: accuracy, drop: 0.05}                  # 5 points below the best so far
      - {metric: accuracy, patience: 2}                 # no new best for 2 iterations
      - {metric: judge_sample_agreement, below: 0.6}    # a health figure or any metric under a bound
      - {metric: judge_parse_failure_rate, above: 0.2}  # ... or over one
      - {length_factor: 2.0}                            # mean_length past 2x the base model's
      - {budget: 20.0}                                  # the run's API cost (generate_cost_usd, ...) past 20

Each rule reads the metrics of iterations 0..K (every metrics file of the iteration, as `selfimprove
metrics` shows them) after iteration K; a rule whose metric an iteration lacks does not fire there.
The runner (selfimprove.pipeline.runner) reproduces one iteration at a time when a loop has rules and, when one
fires at K, compiles the loop to K iterations: nothing after K runs, now or on a rerun, until the rules
or the loop change (a rerun checks the rules again on the same figures). length_factor and budget read
the figures the stages declare for them (selfimprove.core.stage.Metric, role "length" and "cost").
"""

from __future__ import annotations

from typing import Any

from selfimprove.core import registry

KINDS = {  # a rule's deciding key -> what else it needs
    "drop": "metric", "patience": "metric", "below": "metric", "above": "metric",
    "length_factor": None, "budget": None,
}


def check_rules(value: Any, problems, path: tuple = ("stop",)) -> list[dict]:
    """The validated rules of a `stop:` section; each problem is added with its key's path."""
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(path, f"expected a list of rules, e.g. [{{metric: accuracy, drop: 0.05}}], got {value!r}")
        return []
    rules = []
    for i, rule in enumerate(value):
        where = path + (i,)
        if not isinstance(rule, dict):
            problems.add(where, f"expected a rule such as {{metric: accuracy, drop: 0.05}}, got {rule!r}")
            continue
        kinds = [key for key in rule if key in KINDS]
        unknown = [key for key in rule if key not in KINDS and key != "metric"]
        for key in unknown:
            from selfimprove.core.validation import did_you_mean

            problems.add(where + (key,), did_you_mean(key, [*KINDS, "metric"]))
        if len(kinds) != 1:
            problems.add(where, f"a rule has exactly one of {', '.join(KINDS)}; this one has "
                         f"{', '.join(kinds) or 'none'}")
            continue
        kind = kinds[0]
        number = rule[kind]
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            problems.add(where + (kind,), f"expected a number, got {number!r}")
            continue
        if kind in ("drop", "length_factor", "budget", "patience") and number <= 0:
            problems.add(where + (kind,), f"must be > 0, got {number!r}")
            continue
        if kind == "patience" and not isinstance(number, int):
            problems.add(where + (kind,), f"is a number of iterations, a whole number >= 1; got {number!r}")
            continue
        if KINDS[kind] == "metric":
            if not isinstance(rule.get("metric"), str) or not rule.get("metric"):
                problems.add(where, f"`{kind}` needs the metric it watches, e.g. {{metric: accuracy, {kind}: {number}}}")
                continue
        elif "metric" in rule:
            problems.add(where + ("metric",), f"`{kind}` reads its own figures (mean_length / the API cost); drop `metric`")
            continue
        rules.append(dict(rule))
    return rules


def check_metric_names(best: dict | None, stop: list[dict], pipelines: dict, problems) -> None:
    """`best:` and each stop rule name a metric some stage of the loop declares (a misspelt one would
    never be found: RUN@best would fall back, the rule would never fire)."""
    import difflib

    from selfimprove.core.registry import metric as declared_as, stages

    used = {name for pipeline in pipelines.values() for name in pipeline}
    loop_metrics = [m for stage in stages() if stage.name in used or stage.scope == "run" for m in stage.metrics]
    named = [(("best",), best["metric"])] if best else []
    named += [(("stop", i, "metric"), rule["metric"]) for i, rule in enumerate(stop) if "metric" in rule]
    for path, name in named:
        if declared_as(name, loop_metrics):
            continue
        elsewhere = [stage.name for stage in stages() if declared_as(name, list(stage.metrics))]
        if elsewhere:
            problems.add(path, f"{name!r} is written by {', '.join(elsewhere)}, which no iteration of this loop "
                         "runs; name a metric of this loop or add that stage to pipeline:")
            continue
        plain = [m.name for m in loop_metrics if not m.pattern]
        close = difflib.get_close_matches(name, plain, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"this loop's metrics: {', '.join(plain)}"
        problems.add(path, f"no stage of this loop writes a metric {name!r}; {hint}")


def describe(rule: dict) -> str:
    kind = next(key for key in rule if key in KINDS)
    return ", ".join(f"{key}: {rule[key]}" for key in ("metric", kind) if key in rule)


def fired(rules: list[dict], per_iteration: dict[int, dict], k: int) -> str | None:
    """The line saying which rule ends the loop after iteration k, with its figures; None to go on."""
    for rule in rules:
        found = _fires(rule, per_iteration, k)
        if found:
            return f"stop after iteration {k}: rule {{{describe(rule)}}} fired: {found}"
    return None


def _series(per_iteration: dict[int, dict], metric: str, upto: int) -> dict[int, float]:
    return {i: m[metric] for i, m in sorted(per_iteration.items())
            if i <= upto and isinstance(m.get(metric), (int, float)) and not isinstance(m.get(metric), bool)}


def _roles(role: str) -> list:
    """The declared metrics a rule reads by their role: the stages name their own length and cost figures."""
    return [metric for metric in registry.metrics() if metric.role == role]


def _fires(rule: dict, per_iteration: dict[int, dict], k: int) -> str | None:
    kind = next(key for key in rule if key in KINDS)
    bound = rule[kind]
    if kind == "length_factor":
        for length in _roles("length"):
            lengths = _series(per_iteration, length.name, k)
            if k in lengths and 0 in lengths and lengths[0] > 0 and lengths[k] > bound * lengths[0]:
                return (f"{length.name} {lengths[k]:.4g} at iteration {k} is {lengths[k] / lengths[0]:.2f}x the "
                        f"base model's {lengths[0]:.4g} (limit {bound}x)")
        return None
    if kind == "budget":
        costs = _roles("cost")
        spent = sum(value for i, m in per_iteration.items() if i <= k for key, value in m.items()
                    if any(cost.matches(key) for cost in costs)
                    and isinstance(value, (int, float)) and not isinstance(value, bool))
        return f"the run's API cost so far is {spent:.4g} (budget {bound})" if spent > bound else None
    values = _series(per_iteration, rule["metric"], k)
    if k not in values:
        return None
    metric, now = rule["metric"], values[k]
    if kind == "below" and now < bound:
        return f"{metric} {now:.4g} at iteration {k} is below {bound}"
    if kind == "above" and now > bound:
        return f"{metric} {now:.4g} at iteration {k} is above {bound}"
    if kind == "drop":
        best_k = max(values, key=lambda i: (values[i], -i))
        if values[best_k] - now > bound:
            return (f"{metric} {now:.4g} at iteration {k} is {values[best_k] - now:.4g} below the best so far, "
                    f"{values[best_k]:.4g} at iteration {best_k} (margin {bound})")
    if kind == "patience":
        earlier = {i: v for i, v in values.items() if i <= k - bound}
        recent = {i: v for i, v in values.items() if i > k - bound}
        if earlier and len(recent) >= bound and max(recent.values()) <= max(earlier.values()):
            return (f"{metric} has not passed its best, {max(earlier.values()):.4g}, in the {bound} iteration(s) "
                    f"up to {k} (best since: {max(recent.values()):.4g})")
    return None
