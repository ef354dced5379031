"""How the vote and pairs stages scale with the number of samples (target: linear, 10^6 samples < 30 s).

    python benchmarks/vote_pairs_scaling.py            # 10^3 .. 10^6 samples, 8 per question
    python benchmarks/vote_pairs_scaling.py --max 1e5  # a quicker run

Times each stage end to end as DVC runs it (read JSONL, compute, write JSONL) on synthetic samples in
the embedded task's format, and prints seconds and microseconds per sample for each size.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from selfimprove.core.registry import stage_defaults
from selfimprove.stages import pairs, vote
from selfimprove.stages._io import read_jsonl, write_json, write_jsonl


def synthetic_samples(count: int, per_question: int = 8, seed: int = 0) -> list[dict]:
    """Worked-step completions whose answers agree often but not always, like a partly competent model."""
    rng = random.Random(seed)
    rows = []
    for question in range(count // per_question):
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        for j in range(per_question):
            answer = a + b + (0 if rng.random() < 0.6 else rng.choice([-10, -1, 1, 10]))
            rows.append({"id": question, "prompt": f"{a}+{b}=", "gold": str(a + b), "sample": j, "extra": False,
                         "completion": f" {a % 10}+{b % 10}={a % 10 + b % 10} r{answer % 10}; #### {answer}"})
    return rows


def run_vote(samples_path: Path, votes_path: Path) -> None:
    write_jsonl(votes_path, vote.vote(read_jsonl(samples_path)))


def run_pairs(votes_path: Path, pairs_path: Path, stats_path: Path) -> None:
    settings = stage_defaults("pairs")
    built, stats = pairs.build_pairs(read_jsonl(votes_path), settings)
    write_jsonl(pairs_path, built)
    write_json(stats_path, stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=float, default=1e6)
    args = parser.parse_args()
    sizes = [n for n in (10**3, 10**4, 10**5, 10**6) if n <= args.max]
    print(f"{'samples':>9} {'vote s':>8} {'us/sample':>9} {'pairs s':>8} {'us/sample':>9}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for n in sizes:
            write_jsonl(scratch / "samples.jsonl", synthetic_samples(n))
            start = time.perf_counter()
            run_vote(scratch / "samples.jsonl", scratch / "votes.jsonl")
            vote_s = time.perf_counter() - start
            start = time.perf_counter()
            run_pairs(scratch / "votes.jsonl", scratch / "pairs.jsonl", scratch / "pairs.json")
            pairs_s = time.perf_counter() - start
            print(f"{n:>9} {vote_s:>8.2f} {1e6 * vote_s / n:>9.1f} {pairs_s:>8.2f} {1e6 * pairs_s / n:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
