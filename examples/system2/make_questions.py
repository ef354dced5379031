"""Write the short word problems of the System 2 example (numbers, one-step or two-step arithmetic, each
with its answer), seeded, so that the files can be rebuilt exactly:

    python examples/system2/make_questions.py      # writes train.jsonl (48) and eval.jsonl (24) here
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TEMPLATES = [
    ("{name} has {a} apples and buys {b} more. How many apples does {name} have now?", lambda a, b, c: a + b),
    ("A box holds {a} pencils. {name} takes out {b}. How many pencils are left in the box?", lambda a, b, c: a - b),
    ("{name} reads {a} pages a day for {b} days. How many pages is that in all?", lambda a, b, c: a * b),
    ("There are {a} birds on a tree. {b} fly away and then {c} more arrive. How many birds are on the tree?",
     lambda a, b, c: a - b + c),
    ("{name} saves {a} dollars each week. How many dollars has {name} saved after {b} weeks?", lambda a, b, c: a * b),
    ("A class has {a} students. {b} are absent today. How many students are in class?", lambda a, b, c: a - b),
]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana"]


def problems(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        text, answer = rng.choice(TEMPLATES)
        a, b, c = rng.randint(12, 40), rng.randint(2, 11), rng.randint(2, 9)
        rows.append({"question": text.format(name=rng.choice(NAMES), a=a, b=b, c=c), "answer": str(answer(a, b, c))})
    return rows


def main() -> None:
    here = Path(__file__).parent
    for name, count, seed in (("train.jsonl", 48, 0), ("eval.jsonl", 24, 1)):
        (here / name).write_text("".join(json.dumps(row) + "\n" for row in problems(count, seed)))


if __name__ == "__main__":
    main()
