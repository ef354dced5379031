"""Adaptive Decoding's pair rule (Dhuliawala et al. 2024): the latent choices of the best and the worst response.

Every response of a prompt was decoded with temperatures its model's head sampled (generate records them:
one per response at sequence level, one per token at token level). The rule takes chosen = the response
with the highest score and rejected = the lowest (ties broken at random, a prompt whose scores are all
equal dropped: it says nothing about temperature), and the pair's preference is over the temperatures
they were decoded with: LPO (selfimprove.stages.lpo) trains the head to prefer tau_chosen over
tau_rejected. Pairs keep both texts, so the token-level head can be fed the states that chose each tau.
"""

from __future__ import annotations

import random
from collections import defaultdict

from selfimprove.core.errors import UserError
from selfimprove.scoring.pairs import make_pair, prompt_fields
from selfimprove.scoring.rules.scored import _argbest


def latent_pair(record: dict, rng: random.Random) -> dict | None:
    scored = {i: m for i, m in enumerate(record["mean_scores"]) if m is not None}
    if len(scored) < 2 or len(set(scored.values())) == 1:
        return None
    chosen, rejected = _argbest(scored, max, rng), _argbest(scored, min, rng)
    temperatures = record["temperatures"]
    # weight after the temperatures and scores: where this rule's pairs.jsonl has always had it
    return make_pair(record["prompt"], record["completions"][chosen], record["completions"][rejected],
                     id=record["id"], chosen_temperature=temperatures[chosen],
                     rejected_temperature=temperatures[rejected], chosen_score=scored[chosen],
                     rejected_score=scored[rejected], weight=1.0, **prompt_fields(record))


def best_vs_worst_latent(records: list[dict], settings: dict, rng: random.Random) -> tuple[list[dict], dict]:
    if records and "temperatures" not in records[0]:
        raise UserError("pairs.rule latent needs the temperatures each response was decoded with; put the head "
                        "stage before generate (pipeline: [head, generate, reward, pairs, lpo, ...])")
    pairs = [p for r in records if (p := latent_pair(r, rng)) is not None]
    stats = {"prompts": len(records), "pairs": len(pairs), "dropped_ties": len(records) - len(pairs)}
    by_kind: dict = defaultdict(list)
    for pair in pairs:
        if isinstance(pair["chosen_temperature"], (int, float)):  # sequence level: the figures per prompt kind
            by_kind[pair.get("prompt_kind", "all")].append(pair)
    for kind, members in sorted(by_kind.items()):
        stats[f"chosen_temperature_{kind}"] = sum(p["chosen_temperature"] for p in members) / len(members)
        stats[f"rejected_temperature_{kind}"] = sum(p["rejected_temperature"] for p in members) / len(members)
    return pairs, stats


best_vs_worst_latent.needs = "scores"
