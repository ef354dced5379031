"""Write the labelled pair sets of the Self-Taught Evaluator miniature (RewardBench's shape: prompt,
chosen, rejected) from the embedded task's validation and test splits, which no training prompt is
drawn from:

    python examples/self_taught_evaluator/make_pairs.py

chosen is the right sum, rejected one off by an amount a tiny solver gets wrong (1, 2, 3, 10, 20 or
100 either way); each is written worked (digit by digit) or direct at random, as the model writes them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from selfimprove.tasks import tinyarith
from selfimprove.tasks.arith_evaluator import wrong_answer

HERE = Path(__file__).resolve().parent
SIZE = 400


def written(rng: random.Random, a: int, b: int, answer: str) -> str:
    """A response stating answer, worked or direct."""
    if rng.random() < 0.5:
        return f" #### {answer}"
    return tinyarith.worked_solution(a, b).rsplit(" #### ", 1)[0] + f" #### {answer}"


def pairs(split: str, size: int) -> list[dict]:
    rng = random.Random(f"ste-pairs:{split}")
    rows = []
    for record in tinyarith.problems(seed=7, count=size, digits=3, split=split):
        a, b = map(int, record["question"].rstrip("=").split("+"))
        rows.append({"prompt": record["question"], "chosen": written(rng, a, b, record["answer"]),
                     "rejected": written(rng, a, b, wrong_answer(rng, a + b))})
    return rows


if __name__ == "__main__":
    for split in ("validation", "test"):
        path = HERE / f"pairs_{split}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in pairs(split, SIZE)))
        print(f"{path}: {SIZE} pairs")
