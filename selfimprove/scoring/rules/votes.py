"""Pair rules on votes: ScPO's vote rule, IRPO's gold rule and ScPO's semi-supervised mix.

- `most_vs_least_voted` (ScPO, Prasad et al. 2024): chosen = a sample with the most-voted answer,
  rejected = a sample with the least-voted answer (an unparseable sample, or an extra high-temperature
  sample whose answer no voter gave, has 0 votes); the question is kept only if the top answer has at
  least tau = min_votes * n votes; weight w = (V(chosen) - V(rejected)) / n, so near-ties count little.
- `gold` (IRPO, Pang et al. 2024): correct vs incorrect by the gold answer, the gold solution added to
  the correct set, K pairs made by walking both lists at once and restarting a list when it runs out;
  weight 1.
- `semi_supervised` (ScPO section 3): a fixed `labelled_fraction` of the questions use a gold pair
  (a correct vs an incorrect sample, w = 1), the rest the vote rule.
Gold answers are otherwise read only for statistics (how often the vote agreed with the truth).
"""

from __future__ import annotations

import math
import random

from selfimprove.scoring.pairs import make_pair
from selfimprove.tasks.answers import same_answer


def scpo_pair(record: dict, min_votes: float, rng: random.Random) -> dict | None:
    """The vote pair for one prompt, or None when it is dropped (below tau, or nothing to reject)."""
    n, votes = record["n"], record["votes"]
    if below_tau(record, min_votes):
        return None
    top = record["majority"]
    candidates = [(votes.get(a, 0) if a is not None else 0, i) for i, a in enumerate(record["answers"]) if a != top]
    if not candidates:
        return None  # every sample agrees: no rejected response exists
    least = min(v for v, _ in candidates)
    rejected_index = rng.choice([i for v, i in candidates if v == least])
    chosen_index = rng.choice([i for i, a in enumerate(record["answers"]) if a == top and not _extra(record, i)])
    return _pair(record, record["completions"][chosen_index], record["completions"][rejected_index],
                 weight=(record["majority_votes"] - least) / n, chosen_answer=top,
                 rejected_from_extra=_extra(record, rejected_index), source="vote")


def below_tau(record: dict, min_votes: float) -> bool:
    return record["majority"] is None or record["majority_votes"] < min_votes * record["n"]


def gold_pairs(record: dict, per_question: int, add_solution: bool = True) -> list[dict]:
    """IRPO's pairs for one prompt: up to K (correct, incorrect) pairs cycling through both lists, without
    repeating an identical pair of texts. Empty when no sample is incorrect (or none is correct and there
    is no gold solution)."""
    gold = record.get("gold")
    if gold is None:
        raise ValueError(f"question {record['id']} has no gold answer; the gold rule needs labelled prompts "
                         "(data.answer_field)")
    correct = [c for c, a in zip(record["completions"], record["answers"]) if same_answer(a, gold)]
    incorrect = [c for c, a in zip(record["completions"], record["answers"]) if not same_answer(a, gold)]
    if add_solution and record.get("solution"):
        correct.append(record["solution"])
    if not correct or not incorrect:
        return []
    pairs, seen = [], set()
    for i in range(min(per_question, math.lcm(len(correct), len(incorrect)))):
        chosen, rejected = correct[i % len(correct)], incorrect[i % len(incorrect)]
        if (chosen, rejected) not in seen:
            seen.add((chosen, rejected))
            pairs.append(_pair(record, chosen, rejected, weight=1.0, chosen_answer=gold, rejected_from_extra=False,
                               source="gold"))
    return pairs


def semi_supervised_gold_pair(record: dict, rng: random.Random) -> list[dict]:
    """One gold pair from the model's own samples (a correct vs an incorrect one), w = 1; none if either
    set is empty (the paper discards such questions)."""
    gold = record["gold"]
    correct = [c for c, a in zip(record["completions"], record["answers"]) if same_answer(a, gold)]
    incorrect = [c for c, a in zip(record["completions"], record["answers"]) if not same_answer(a, gold)]
    if not correct or not incorrect:
        return []
    return [_pair(record, rng.choice(correct), rng.choice(incorrect), weight=1.0, chosen_answer=gold,
                  rejected_from_extra=False, source="gold")]


def is_labelled(record: dict, fraction: float, seed: int) -> bool:
    """A fixed, seeded choice of which questions count as labelled in the semi-supervised variant."""
    return record.get("gold") is not None and random.Random(f"labelled:{seed}:{record['id']}").random() < fraction


def _pair(record: dict, chosen: str, rejected: str, weight: float, chosen_answer, rejected_from_extra: bool,
          source: str) -> dict:
    return make_pair(record["prompt"], chosen, rejected, id=record["id"], weight=weight, source=source,
                     rejected_from_extra=rejected_from_extra,
                     chosen_correct=same_answer(chosen_answer, record.get("gold")))


def _extra(record: dict, index: int) -> bool:
    return bool(record.get("extra") and record["extra"][index])


def most_vs_least_voted(records: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    return _voted(records, settings, rng, labelled=lambda record: False)


def gold(records: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    pairs = [pair for record in records for pair in gold_pairs(record, settings["pairs_per_question"])]
    return pairs, _statistics(records, pairs, [], settings)


def semi_supervised(records: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    return _voted(records, settings, rng,
                  labelled=lambda record: is_labelled(record, settings["labelled_fraction"], settings["seed"]))


for _rule in (most_vs_least_voted, gold, semi_supervised):
    _rule.needs = "votes"


def _voted(records: list[dict], settings: dict, rng: random.Random, labelled) -> tuple[list[dict], dict]:
    """Vote pairs, except for the questions `labelled` picks, which get a gold pair."""
    pairs, vote_records = [], []
    for record in records:
        if labelled(record):
            pairs += semi_supervised_gold_pair(record, rng)
            continue
        vote_records.append(record)
        pair = scpo_pair(record, settings["min_votes"], rng)
        if pair is not None:
            if settings["weight"] == "none":
                pair["weight"] = 1.0
            pairs.append(pair)
    return pairs, _statistics(records, pairs, vote_records, settings)


def _statistics(records: list[dict], pairs: list[dict], vote_records: list[dict], settings: dict) -> dict:
    labelled = [r for r in records if r.get("gold") is not None]
    return {
        "prompts": len(records),
        "pairs": len(pairs),
        "gold_pairs": sum(p["source"] == "gold" for p in pairs),
        "dropped_below_tau": sum(below_tau(r, settings["min_votes"]) for r in vote_records),
        "mean_weight": sum(p["weight"] for p in pairs) / len(pairs) if pairs else 0.0,
        "rejected_from_extra": sum(p["rejected_from_extra"] for p in pairs),
        # Statistics only: how often what was chosen, and what the vote said, agrees with the truth.
        "chosen_correct": sum(p["chosen_correct"] for p in pairs),
        "majority_correct": sum(same_answer(r["majority"], r["gold"]) for r in labelled),
        "labelled_prompts": len(labelled),
    }
