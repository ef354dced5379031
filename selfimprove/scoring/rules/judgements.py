"""Rules on pairwise judgements (Self-Taught Evaluator, Wang et al. 2024): the judge's own judgements of
synthetic pairs, each with the verdict the construction makes right, become its training data.

- `judgement_sft` (rejection sampling): per judged order, one sampled judgement whose verdict is the
  right one (a random one of them); an order with none is dropped, and so is one where fewer than
  `min_correct` of the samples are right (RAM's optional majority rule). The kept examples are then
  balanced between the two verdicts by dropping, at random, some of the more frequent one, so the judge
  is not taught a favourite position. SFT on (judge prompt -> judgement).
- `judgement_dpo` (the released recipe's second stage): per order, chosen = a right judgement and
  rejected = a wrong, tie or unparseable one, balanced the same way; DPO + NLL (beta 0.1, NLL weight 1.5
  in the recipe) on them.
"""

from __future__ import annotations

import random

from selfimprove.core.stage import Setting
from selfimprove.scoring.pairs import make_pair

SETTINGS = {
    "min_correct": Setting(float, 0.0, "judgement rules: drop an order where fewer than this share of the sampled "
                           "verdicts are right (0: one right judgement is enough)", check=lambda v: 0 <= v <= 1,
                           fix="is a share of the samples; use a value in [0, 1]", omit_default=True),
}


def _right_and_wrong(order: dict) -> tuple[list[str], list[str]]:
    right = [t for t, v in zip(order["judgements"], order["verdicts"]) if v == order["label"]]
    wrong = [t for t, v in zip(order["judgements"], order["verdicts"]) if v != order["label"]]
    return right, wrong


def _balanced(examples: list[dict], rng: random.Random) -> tuple[list[dict], int]:
    """As many examples of verdict A as of B (a random subset of the larger side); how many were dropped."""
    by_label = {label: [e for e in examples if e["label"] == label] for label in ("A", "B")}
    size = min(len(v) for v in by_label.values())
    kept = [e for label in ("A", "B") for e in rng.sample(by_label[label], size)]
    kept.sort(key=lambda e: (e["id"], e["label"]))
    return kept, len(examples) - len(kept)


def _select(records: list[dict], settings: dict, rng: random.Random, make) -> tuple[list[dict], dict]:
    floor = settings["min_correct"]
    examples, none_right, below = [], 0, 0
    for order in records:
        right, wrong = _right_and_wrong(order)
        if not right:
            none_right += 1
            continue
        if len(right) < floor * len(order["verdicts"]):
            below += 1
            continue
        example = make(order, right, wrong)
        if example is not None:
            examples.append(example)
    kept, unbalanced = _balanced(examples, rng)
    stats = {"prompts": len(records), "pairs": len(kept), "dropped_no_right_judgement": none_right,
             "dropped_below_min_correct": below, "dropped_balance": unbalanced,
             "kept_verdict_a": sum(e["label"] == "A" for e in kept)}
    return kept, stats


def judgement_sft(records: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    def make(order, right, wrong):
        judgement = rng.choice(right)
        # weight after label: where these examples have always had it
        return make_pair(order["prompt"], judgement, id=order["id"], completion=judgement, label=order["label"],
                         weight=1.0, source="judgement_sft")

    return _select(records, settings, rng, make)


def judgement_dpo(records: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    no_wrong = []

    def make(order, right, wrong):
        if not wrong:
            no_wrong.append(order["id"])
            return None
        return make_pair(order["prompt"], rng.choice(right), rng.choice(wrong), id=order["id"], label=order["label"],
                         weight=1.0, source="judgement_dpo")

    pairs, stats = _select(records, settings, rng, make)
    return pairs, {**stats, "dropped_no_wrong_judgement": len(no_wrong)}


judgement_sft.needs = judgement_dpo.needs = "judgements"
judgement_sft.makes = "sft"
judgement_sft.settings = judgement_dpo.settings = dict(SETTINGS)
