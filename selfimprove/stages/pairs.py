"""Build preference pairs from votes (ScPO's vote rule, IRPO's gold rule, ScPO's semi-supervised mix) or
from judge scores (Self-Rewarding's best vs worst, TPO's length-controlled score, Meta-Rewarding's band).

    python -m selfimprove.stages.pairs --params params.yaml --run scpo --iteration 1 \
        --scored runs/scpo/it1/votes.jsonl --out runs/scpo/it1/pairs.jsonl --stats runs/scpo/it1/pairs.json

- `most_vs_least_voted` (ScPO, Prasad et al. 2024): chosen = a sample with the most-voted answer,
  rejected = a sample with the least-voted answer (an unparseable sample, or an extra high-temperature
  sample whose answer no voter gave, has 0 votes); the question is kept only if the top answer has at
  least tau = min_votes * n votes; weight w = (V(chosen) - V(rejected)) / n, so near-ties count little.
- `gold` (IRPO, Pang et al. 2024): correct vs incorrect by the gold answer, the gold solution added to
  the correct set, K pairs made by walking both lists at once and restarting a list when it runs out;
  weight 1.
- `semi_supervised` (ScPO section 3): a fixed `labelled_fraction` of the questions use a gold pair
  (a correct vs an incorrect sample, w = 1), the rest the vote rule.
- `best_vs_worst` (Self-Rewarding, Yuan et al. 2024): chosen = the highest mean judge score, rejected =
  the lowest; the prompt is dropped when they are equal.
- `length_controlled` (TPO, Wu et al. 2024): s = z(score) - rho * z(length) within the prompt's samples;
  chosen = argmax s, rejected = argmin s.
- `length_band` (Meta-Rewarding, Wu et al. 2024): chosen = the shortest response scoring within rho of the
  best, rejected = the longest within rho of the worst (rho = 0 is best vs worst).
With every judge rule, an output the judge could not see (no response marker) is rejected first, and a
response whose judgements all failed to parse takes no part (a failure is never a score).
Gold answers are otherwise read only for statistics (how often the vote agreed with the truth).
"""

from __future__ import annotations

import math
import random

from selfimprove.answers import same_answer
from selfimprove.stages._io import iteration_stage_parser, read_jsonl, read_section, stage_main, write_json, write_jsonl


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
    return {"id": record["id"], "prompt": record["prompt"], "chosen": chosen, "rejected": rejected,
            "weight": weight, "source": source, "rejected_from_extra": rejected_from_extra,
            "chosen_correct": same_answer(chosen_answer, record.get("gold"))}


def _extra(record: dict, index: int) -> bool:
    return bool(record.get("extra") and record["extra"][index])


JUDGE_RULES = ("best_vs_worst", "length_controlled", "length_band")


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
    return {"id": record["id"], "prompt": record["prompt"], "chosen": record["completions"][chosen],
            "rejected": record["completions"][rejected], "weight": 1.0, "source": "judge",
            "rejected_from_extra": False, "rejected_unsplittable": bool(unsplittable),
            "chosen_score": means[chosen], "rejected_score": means[rejected],
            "chosen_length": len(record["responses"][chosen]),
            "rejected_length": len(record["responses"][rejected] or record["completions"][rejected]),
            "chosen_correct": correct[chosen], "rejected_correct": correct[rejected]}  # None without gold


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


def build_judged_pairs(records: list[dict], settings: dict, seed: int = 0) -> tuple[list[dict], dict]:
    rng = random.Random(seed)
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


def build_pairs(records: list[dict], settings: dict, seed: int = 0) -> tuple[list[dict], dict]:
    if settings["rule"] in JUDGE_RULES:
        return build_judged_pairs(records, settings, seed)
    rng = random.Random(seed)
    rule, pairs, vote_records = settings["rule"], [], []
    for record in records:
        if rule == "gold":
            pairs += gold_pairs(record, settings["pairs_per_question"])
        elif rule == "semi_supervised" and is_labelled(record, settings["labelled_fraction"], settings["seed"]):
            pairs += semi_supervised_gold_pair(record, rng)
        else:
            vote_records.append(record)
            pair = scpo_pair(record, settings["min_votes"], rng)
            if pair is not None:
                if settings["weight"] == "none":
                    pair["weight"] = 1.0
                pairs.append(pair)
    labelled = [r for r in records if r.get("gold") is not None]
    stats = {
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
    return pairs, stats


def main(argv=None) -> None:
    parser = iteration_stage_parser(__doc__, "scored", "out", "stats")
    parser.add_argument("--judge-pairs", action="append", default=[],
                        help="Meta-Rewarding's judge pairs (from the metajudge stage), trained on with the actor pairs")
    args = parser.parse_args(argv)
    settings = read_section(args.params, f"{args.run}.it{args.iteration}.pairs")
    pairs, stats = build_pairs(read_jsonl(args.scored), settings, seed=settings["seed"] * 1000 + args.iteration)
    extra = [pair for path in args.judge_pairs for pair in read_jsonl(path)]
    pairs += extra
    stats["actor_pairs"], stats["pairs"] = stats["pairs"], stats["pairs"] + len(extra)
    write_jsonl(args.out, pairs)
    write_json(args.stats, stats)
    dropped = (f"{stats['dropped_ties']} ties" if "dropped_ties" in stats
               else f"{stats['dropped_below_tau']} below tau, {stats['gold_pairs']} gold")
    print(f"pairs: {stats['pairs']} from {stats['prompts']} prompts ({dropped})")


if __name__ == "__main__":
    stage_main(main)
