"""Build preference pairs from votes with ScPO's rule (Prasad et al. 2024).

    python -m selfimprove.stages.pairs --params params.yaml --run scpo --iteration 1 \
        --votes runs/scpo/it1/votes.jsonl --out runs/scpo/it1/pairs.jsonl --stats runs/scpo/it1/pairs.json

chosen = a sample with the most-voted answer, rejected = a sample with the least-voted answer (an
unparseable sample counts as least-voted); the prompt is kept only if the top answer has at least
tau = min_votes * n votes; weight w = (V(chosen) - V(rejected)) / n, so near-ties count little.
"""

from __future__ import annotations

import argparse
import random

from selfimprove.answers import same_answer
from selfimprove.stages._io import read_jsonl, read_section, write_json, write_jsonl


def scpo_pair(record: dict, min_votes: float, rng: random.Random) -> dict | None:
    """The pair for one prompt, or None when it is dropped (below tau, or nothing to reject)."""
    n, votes = record["n"], record["votes"]
    if record["majority"] is None or record["majority_votes"] < min_votes * n:
        return None
    top = record["majority"]
    candidates = [(votes.get(a, 0) if a is not None else 0, i) for i, a in enumerate(record["answers"]) if a != top]
    if not candidates:
        return None  # every sample agrees: no rejected response exists
    least = min(v for v, _ in candidates)
    rejected_index = rng.choice([i for v, i in candidates if v == least])
    chosen_index = rng.choice([i for i, a in enumerate(record["answers"]) if a == top])
    return {
        "id": record["id"], "prompt": record["prompt"],
        "chosen": record["completions"][chosen_index], "rejected": record["completions"][rejected_index],
        "chosen_votes": record["majority_votes"], "rejected_votes": least,
        "weight": (record["majority_votes"] - least) / n,
        "chosen_correct": same_answer(top, record.get("gold")),
    }


def build_pairs(records: list[dict], settings: dict, seed: int = 0) -> tuple[list[dict], dict]:
    rng = random.Random(seed)
    pairs = [p for p in (scpo_pair(r, settings["min_votes"], rng) for r in records) if p is not None]
    if settings["weight"] == "none":
        for pair in pairs:
            pair["weight"] = 1.0
    labelled = [r for r in records if r.get("gold") is not None]
    stats = {
        "prompts": len(records),
        "pairs": len(pairs),
        "dropped_below_tau": sum(1 for r in records if r["majority"] is None or r["majority_votes"] < settings["min_votes"] * r["n"]),
        "mean_weight": sum(p["weight"] for p in pairs) / len(pairs) if pairs else 0.0,
        # Only measurable when gold answers exist; the pairs never use them.
        "chosen_correct": sum(p["chosen_correct"] for p in pairs),
        "majority_correct": sum(same_answer(r["majority"], r["gold"]) for r in labelled),
        "labelled_prompts": len(labelled),
    }
    return pairs, stats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--iteration", type=int, required=True)
    parser.add_argument("--votes", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stats", required=True)
    args = parser.parse_args(argv)
    settings = read_section(args.params, f"{args.run}.it{args.iteration}.pairs")
    pairs, stats = build_pairs(read_jsonl(args.votes), settings, seed=args.iteration)
    write_jsonl(args.out, pairs)
    write_json(args.stats, stats)
    print(f"pairs: {stats['pairs']} of {stats['prompts']} prompts ({stats['dropped_below_tau']} below tau)")


if __name__ == "__main__":
    main()
