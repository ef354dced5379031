"""The embedded arithmetic task behind `builtin:tiny-arith` and `builtin:arith/{train,test}`.

Why this task: self-consistency helps an LLM when its greedy answer is often a wrong guess while the
samples that reason step by step agree on the right answer (GSM8K). We reproduce that regime on purpose.
The model is trained on a mixture: most examples state the sum directly (hard for a tiny model, so its
guesses scatter), the rest add digit by digit with carries (easy, so those samples agree). Greedy decoding
takes the majority format (direct) and is often wrong; sampling takes the worked path part of the time,
and the majority vote lands on the right answer. ScPO then teaches the model to prefer what it agrees on.

Formats (character-level tokens):
    question:  "47+38="
    direct:    " #### 85"
    worked:    " 7+8=15 r5; 4+3+1=8 r85; #### 85"
"""

from __future__ import annotations

import random
import zlib

CHARS = list("0123456789+=#;r ")
SPECIAL = {"pad": "<pad>", "bos": "<s>", "eos": "</s>"}


def make_problem(rng: random.Random, digits: int) -> tuple[int, int]:
    low, high = 10 ** (digits - 1), 10 ** digits - 1
    return rng.randint(low, high), rng.randint(low, high)


def question(a: int, b: int) -> str:
    return f"{a}+{b}="


def direct_solution(a: int, b: int) -> str:
    return f" #### {a + b}"


def worked_solution(a: int, b: int) -> str:
    """Add digit by digit from the right, writing each column, its carry and the result so far
    (r...). The running result makes the final answer a copy rather than a re-assembly of digits
    written in reverse order, which a tiny model gets wrong."""
    xs, ys = str(a)[::-1], str(b)[::-1]
    steps, carry, running = [], 0, ""
    columns = max(len(xs), len(ys))
    for i in range(columns):
        x = int(xs[i]) if i < len(xs) else 0
        y = int(ys[i]) if i < len(ys) else 0
        total = x + y + carry
        terms = f"{x}+{y}" + (f"+{carry}" if carry else "")
        carry = total // 10
        running = (str(total) if i == columns - 1 else str(total % 10)) + running
        steps.append(f"{terms}={total} r{running}")
    return " " + "; ".join(steps) + f"; #### {a + b}"


def problems(seed: int, count: int, digits: int, split: str) -> list[dict]:
    """Deterministic question/answer/solution records from one part of a fixed partition of all
    problems (two-digit addition has only 8,100, so random draws alone would overlap)."""
    rng = random.Random(f"{split}:{seed}:{digits}")
    records = []
    while len(records) < count:
        a, b = make_problem(rng, digits)
        if _split_of(a, b) != split:
            continue
        records.append({"question": question(a, b), "answer": str(a + b), "solution": worked_solution(a, b)})
    return records


def _split_of(a: int, b: int) -> str:
    """A fixed partition of all problems (20% test, 10% validation, 70% train), so training prompts never
    appear in the held-out sets and settings are chosen on validation, not on test. A hash, not a linear
    form in a and b: (7919a + 104729b) % 5 reduces to (a + b) % 5, which put every sum divisible by 5 in
    the test split and none in training."""
    bucket = zlib.crc32(f"{a}+{b}".encode()) % 10
    return "test" if bucket < 2 else "validation" if bucket == 2 else "train"


def bootstrap_examples(seed: int, count: int, digits: int, direct_fraction: float) -> list[tuple[str, str]]:
    """(prompt, completion) pairs for pretraining the tiny model on the train partition."""
    rng = random.Random(f"bootstrap:{seed}:{digits}")
    examples = []
    while len(examples) < count:
        a, b = make_problem(rng, digits)
        if _split_of(a, b) != "train":
            continue
        solve = direct_solution if rng.random() < direct_fraction else worked_solution
        examples.append((question(a, b), solve(a, b)))
    return examples
