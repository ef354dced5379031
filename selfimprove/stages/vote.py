"""Extract each sample's final answer and count votes per prompt (self-consistency).

    python -m selfimprove.stages.vote --samples runs/scpo/it1/samples.jsonl --out runs/scpo/it1/votes.jsonl
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict

from selfimprove.answers import extract_final
from selfimprove.stages._io import read_jsonl, stage_main, write_jsonl


def vote(samples: list[dict]) -> list[dict]:
    """One record per prompt: its samples with their answers, the vote counts and the majority.
    A sample with no parseable answer votes for nothing (answer None) and can never be chosen.
    Extra samples (ScPO's high-temperature draws) get answers but no votes: V counts the n voters."""
    by_prompt: dict[int, list[dict]] = defaultdict(list)
    for row in samples:
        by_prompt[row["id"]].append(row)
    records = []
    for prompt_id in sorted(by_prompt):
        rows = by_prompt[prompt_id]
        answers = [extract_final(r["completion"]) for r in rows]
        voters = [a for a, r in zip(answers, rows) if not r.get("extra")]
        counts = Counter(a for a in voters if a is not None)
        majority, majority_votes = (counts.most_common(1)[0] if counts else (None, 0))
        records.append({
            "id": prompt_id, "prompt": rows[0]["prompt"], "gold": rows[0].get("gold"),
            "solution": rows[0].get("solution"), "completions": [r["completion"] for r in rows],
            "answers": answers, "extra": [bool(r.get("extra")) for r in rows],
            "votes": dict(counts), "majority": majority, "majority_votes": majority_votes, "n": len(voters),
        })
    return records


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    records = vote(read_jsonl(args.samples))
    write_jsonl(args.out, records)
    print(f"vote: {len(records)} prompts")


if __name__ == "__main__":
    stage_main(main)
