"""RIP (Yu et al. 2025): drop the prompts whose best-vs-worst pair says the prompt itself is bad.

    python -m selfimprove.stages.filter --params params.yaml --run rip --iteration 1 \
        --pairs runs/rip/it1/pairs.jsonl --out runs/rip/it1/pairs_kept.jsonl --stats runs/rip/it1/filter.json

Reads the judged pairs of the pairs stage (rule best_vs_worst: one pair per prompt, chosen = the best
response by reward, rejected = the worst). Per prompt: m1 = the rejected response's reward, m2 = its
length in characters, m3 = the gap chosen_score - rejected_score. A bad prompt (malformed, ambiguous,
unanswerable) yields low-quality, short and highly variable responses, so RIP keeps
    m1 > p(min_rejected_reward_pct)  and  m2 > p(min_rejected_length_pct)  and  m3 < p(max_gap_pct),
each p a percentile of that metric over this iteration's pairs (numpy.percentile, linear). The paper's
best setting, the default: all three at the 50th percentile. A percentile of -1 switches its rule off.
`strict: false` turns the comparisons into >=, >=, <= (see `keep_rule` for why it matters).
A rejected response the judge could not see (no score, `rejected_unsplittable`) counts as the worst
reward there is: it fails the reward rule and the gap rule, and takes no part in their percentiles.
"""

from __future__ import annotations

import math

from selfimprove.core.errors import UserError
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import iteration_stage_args, read_jsonl, read_section, stage_main, write_json, write_jsonl

OFF = -1  # a percentile setting of -1 switches its rule off
RULES = (  # (metric, percentile setting, which side is kept)
    ("rejected_reward", "min_rejected_reward_pct", "above"),
    ("rejected_length", "min_rejected_length_pct", "above"),
    ("gap", "max_gap_pct", "below"),
)


def metrics(pair: dict) -> dict[str, float]:
    """m1, m2, m3 of one pair; an unscored rejected response has reward -inf and gap +inf."""
    missing = [k for k in ("chosen_score", "rejected_score", "rejected_length") if k not in pair]
    if missing:
        raise UserError(f"filter: pair {pair.get('id')} has no {', '.join(missing)}; RIP reads judged pairs "
                        "(pairs.rule: best_vs_worst, after a judge stage)")
    rejected = pair["rejected_score"]
    if rejected is None:
        return {"rejected_reward": -math.inf, "rejected_length": float(pair["rejected_length"]), "gap": math.inf}
    return {"rejected_reward": float(rejected), "rejected_length": float(pair["rejected_length"]),
            "gap": float(pair["chosen_score"]) - float(rejected)}


def threshold(values: list[float], pct: float) -> float | None:
    """The pct-th percentile (linear interpolation) of the finite values; None when the rule is off or
    nothing is finite (every rejected response unscored: the -inf/+inf values fail the rule anyway)."""
    import numpy as np

    finite = [v for v in values if math.isfinite(v)]
    if pct == OFF or not finite:
        return None
    return float(np.percentile(finite, pct, method="linear"))


def keep_rule(value: float, limit: float | None, side: str, strict: bool) -> bool:
    """Whether one metric passes its rule. With discrete rewards (tinyarith's judge gives 1 or 5, averaged
    over a few judgements) many prompts tie exactly at the percentile; strict comparisons (the paper's
    ">" and "<", the default) drop every tie, non-strict ones keep every tie. Which is used is one
    setting for all three rules, so a tie is treated the same whichever metric it falls on. Note that
    with strict comparisons a metric whose values are mostly equal can remove almost every prompt (if
    more than half the rejected rewards are 1, p50 is 1 and `> 1` keeps only the rest)."""
    if limit is None:
        return True
    if side == "above":
        return value > limit if strict else value >= limit
    return value < limit if strict else value <= limit


def rip_filter(pairs: list[dict], settings: dict) -> tuple[list[dict], dict]:
    """(the kept pairs, in their order; the statistics of filter.json). Each rule's removal count is that
    rule alone over all pairs; filter_removed is the joint removal (a prompt failing several rules
    counts once)."""
    strict = settings["strict"]
    values = [metrics(p) for p in pairs]
    limits = {metric: threshold([v[metric] for v in values], settings[key]) for metric, key, _ in RULES}
    passes = [{metric: keep_rule(v[metric], limits[metric], side, strict) for metric, _, side in RULES}
              for v in values]
    kept = [p for p, ok in zip(pairs, passes) if all(ok.values())]
    stats = {"filter_prompts": len(pairs), "filter_kept": len(kept), "filter_removed": len(pairs) - len(kept)}
    for metric, _, _ in RULES:
        stats[f"filter_removed_by_{metric}"] = sum(not ok[metric] for ok in passes)
        if limits[metric] is not None:  # absent when the rule is off: every figure of a metrics file is a number
            stats[f"filter_threshold_{metric}"] = limits[metric]
    flagged = [(p["prompt_bad"], all(ok.values())) for p, ok in zip(pairs, passes) if p.get("prompt_bad") is not None]
    if flagged:  # a task that knows its bad prompts (noisy-arith): how precisely the filter finds them
        stats["filter_bad_prompts"] = sum(bad for bad, _ in flagged)
        stats["filter_bad_removed"] = sum(bad and not keep for bad, keep in flagged)
        stats["filter_good_kept"] = sum(not bad and keep for bad, keep in flagged)
    return kept, stats


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "pairs", "out", "stats")
    settings = read_section(args.params, args.run)[f"it{args.iteration}"]["filter"]
    kept, stats = rip_filter(read_jsonl(args.pairs), settings)
    write_jsonl(args.out, kept)
    write_json(args.stats, stats)
    removed = ", ".join(f"{stats[f'filter_removed_by_{m}']} by {m.replace('_', ' ')}" for m, _, _ in RULES)
    print(f"filter: kept {stats['filter_kept']} of {stats['filter_prompts']} prompts (removed {removed})")


@declaration
def _pct(what: str) -> Setting:
    return Setting(float, 50.0, f"{what}; the paper's best: 50", check=lambda v: v == OFF or 0 <= v <= 100,
                   fix="is a percentile in [0, 100], or -1 for off")


SETTINGS = {
    "min_rejected_reward_pct": _pct("keep a prompt whose rejected reward is above this percentile"),
    "min_rejected_length_pct": _pct("keep a prompt whose rejected response is longer than this percentile"),
    "max_gap_pct": _pct("keep a prompt whose chosen - rejected reward gap is below this percentile"),
    "strict": Setting(bool, True, "compare with > and < (the paper); false: >= and <=, keeping ties"),
}


@declaration
def node(ctx: Context) -> dict:
    out = ctx.outputs
    return ctx.node(STAGE, cmd=ctx.command(STAGE, pairs=ctx.inputs["pairs"], out=out["pairs"], stats=out["filter_stats"]),
                    deps=[ctx.inputs["pairs"]], params=[ctx.section("filter")], outs=[out["pairs"]],
                    metrics=[out["filter_stats"]])


STAGE = Stage("filter", SETTINGS, node=node, reads=("pairs",), writes={"pairs": "pairs_kept.jsonl", "filter_stats": "filter.json"},
              included=lambda settings: False,  # only where a loop's pipeline names it
              # role "dropped": why the kept set can end empty (selfimprove.pipeline.empty says it)
              metrics=(Stage.Metric("filter_kept", help="pairs the filter kept (the training set)"),
                       Stage.Metric("filter_removed_by_rejected_reward", role="dropped", help="pairs whose rejected "
                                    "reward is not above its percentile (filter.min_rejected_reward_pct)"),
                       Stage.Metric("filter_removed_by_rejected_length", role="dropped", help="pairs whose rejected "
                                    "response is not longer than its percentile (filter.min_rejected_length_pct)"),
                       Stage.Metric("filter_removed_by_gap", role="dropped",
                                    help="pairs whose reward gap is not below its percentile (filter.max_gap_pct)")))


if __name__ == "__main__":
    stage_main(main)
