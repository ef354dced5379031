"""Pair rules on scores (one per response, from the judge or reward stage): Self-Rewarding's best vs
worst, TPO's length-controlled score and Meta-Rewarding's length band.

- `best_vs_worst` (Self-Rewarding, Yuan et al. 2024): chosen = the highest mean score, rejected = the
  lowest; the prompt is dropped when they are equal.
- `length_controlled` (TPO, Wu et al. 2024): s = z(score) - rho * z(length) within the prompt's samples;
  chosen = argmax s, rejected = argmin s.
- `length_band` (Meta-Rewarding, Wu et al. 2024): chosen = the shortest response scoring within rho of the
  best, rejected = the longest within rho of the worst (rho = 0 is best vs worst).
With every rule, an output the judge could not see (no response marker) is rejected first, and a
response without a score (all its judgements failed to parse) takes no part: a failure is never a score.
"""

from __future__ import annotations

import random

from selfimprove.scoring.pairs import make_pair, prompt_fields


def judged_pair(record: dict, rule: str, rho: float, rng: random.Random) -> dict | None:
    """The pair of one judged prompt, or None (fewer than two usable responses, or a tie)."""
    scored = [i for i, m in enumerate(record["mean_scores"]) if m is not None]
    unsplittable = [i for i, u in enumerate(record["unsplittable"]) if u]
    if not scored or len(scored) + len(unsplittable) < 2:
        return None
    means = record["mean_scores"]
    lengths = [len(record["responses"][i]) for i in scored]
    if rule == "length_controlled":
        values = dict(zip(scored, _z([means[i] for i in scored]) - rho * _z(lengths)))
        chosen, rejected = _argbest(values, max, rng), _argbest(values, min, rng)
    elif rule == "length_band":
        chosen, rejected = _band_choice(record, scored, rho, rng)
    else:
        chosen = _argbest({i: means[i] for i in scored}, max, rng)
        rejected = _argbest({i: means[i] for i in scored}, min, rng)
    if unsplittable:
        rejected = rng.choice(unsplittable)
    elif means[chosen] == means[rejected]:
        return None  # a tie says nothing about which is better
    correct = record.get("correct") or [None] * len(means)
    return make_pair(record["prompt"], record["completions"][chosen], record["completions"][rejected],
                     id=record["id"], source="judge", rejected_from_extra=False,
                     rejected_unsplittable=bool(unsplittable), chosen_score=means[chosen],
                     rejected_score=means[rejected], chosen_length=len(record["responses"][chosen]),
                     rejected_length=len(record["responses"][rejected] or record["completions"][rejected]),
                     chosen_correct=correct[chosen], rejected_correct=correct[rejected],  # None without gold
                     **prompt_fields(record))


def _z(values: list[float]):
    """z-scores within one prompt's samples; all zeros when they do not vary."""
    import numpy as np

    array = np.asarray(values, dtype=float)
    spread = array.std()
    return (array - array.mean()) / spread if spread > 0 else np.zeros_like(array)


def _argbest(values: dict[int, float], pick, rng: random.Random) -> int:
    best = pick(values.values())
    return rng.choice([i for i, v in values.items() if v == best])


def _band_choice(record: dict, scored: list[int], rho: float, rng: random.Random) -> tuple[int, int]:
    """Meta-Rewarding's length control: the shortest of the top tier, the longest of the bottom tier."""
    means, responses = record["mean_scores"], record["responses"]
    high, low = max(means[i] for i in scored), min(means[i] for i in scored)
    top = [i for i in scored if means[i] >= (1 - rho) * high + rho * low]
    bottom = [i for i in scored if means[i] <= (1 - rho) * low + rho * high]
    shortest = min(len(responses[i]) for i in top)
    longest = max(len(responses[i]) for i in bottom)
    return (rng.choice([i for i in top if len(responses[i]) == shortest]),
            rng.choice([i for i in bottom if len(responses[i]) == longest]))


def build_judged_pairs(records: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    pairs = [p for r in records if (p := judged_pair(r, settings["rule"], settings["rho"], rng)) is not None]
    labelled = [p for p in pairs if p["chosen_correct"] is not None]
    stats = {
        "prompts": len(records),
        "pairs": len(pairs),
        "dropped_ties": sum(_is_tie(r) for r in records),
        "rejected_unsplittable": sum(p["rejected_unsplittable"] for p in pairs),
        "mean_chosen_length": sum(p["chosen_length"] for p in pairs) / len(pairs) if pairs else 0.0,
        "mean_rejected_length": sum(p["rejected_length"] for p in pairs) / len(pairs) if pairs else 0.0,
        # Statistics only: how often the judge's preference agrees with the truth.
        "chosen_correct": sum(p["chosen_correct"] for p in labelled),
        "rejected_correct": sum(p["rejected_correct"] for p in labelled),
    }
    return pairs, stats


def _is_tie(record: dict) -> bool:
    means = [m for m in record["mean_scores"] if m is not None]
    return len(means) >= 2 and not any(record["unsplittable"]) and len(set(means)) == 1


def best_vs_worst(records: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    return build_judged_pairs(records, dict(settings, rule="best_vs_worst"), rng)


def length_controlled(records: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    return build_judged_pairs(records, dict(settings, rule="length_controlled"), rng)


def length_band(records: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    return build_judged_pairs(records, dict(settings, rule="length_band"), rng)


for _rule in (best_vs_worst, length_controlled, length_band):
    _rule.needs = "scores"
