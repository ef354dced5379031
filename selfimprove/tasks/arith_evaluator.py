"""The embedded arithmetic task's evaluator variant, behind `builtin:tiny-arith-evaluator`: the miniature
of the Self-Taught Evaluator's seed model (Wang et al. 2024). It solves and judges like
`builtin:tiny-arith-judge` (selfimprove.tasks.tinyarith) and also learns two formats of that paper:

    pairwise prompt:  "447+338=786 B:785 pair:"
    judgement:        " 7+8=15 r5; 4+3+1=8 r85; 4+3=7 r785; 786 vs 785: 7=7, 8=8, 6/5. [[B]]"
    perturb prompt:   "447+338=785 modify:"
    completion:       " 447+339="

Answer A stands where a pointwise judge prompt has its candidate, and the judgement is the pointwise
check (worked steps, then A against the sum digit by digit) ending in a verdict, A when they agree,
else B: the model's known check in a new format. The seed's flaw is the paper's kind, a judge that
misses subtle errors: in its pairwise examples an A wrong in the units digit only (off by 1 to 3) is
still named the winner SUBTLE_MISS of the time, so the seed judges about 3 in 4 orders right, as the
paper's seed judge (75.4 on RewardBench), and samples the right verdict on the others only sometimes.
That minority is what rejection sampling against the construction's labels keeps. The modified
instruction is a nearby problem (one digit of one operand moved by one), whose sum answers it and not
the original: the paper's "close but different" instruction.
"""

from __future__ import annotations

import random

from selfimprove.tasks import tinyarith
from selfimprove.tasks import Task

PAIRWISE_TEMPLATE = "{question}{response_a} B:{response_b} pair:"
PERTURB_TEMPLATE = "{question}{response} modify:"
# Shares of the bootstrap's examples, taken from the solving and judging mixture of tiny-arith-judge.
PAIRWISE_SHARE = 0.05
PERTURB_SHARE = 0.05
SUBTLE_MISS = 0.7  # how often the seed's examples name a units-digit-wrong A the winner


def pairwise_judgement(a: int, b: int, response_a: str, verdict: str | None = None) -> str:
    """The judgement of a pair: the pointwise check of answer A, then the verdict (A when A is the sum,
    else B, unless given)."""
    checked, _ = tinyarith.check(a, b, response_a)
    return f"{checked} [[{verdict or ('A' if response_a == str(a + b) else 'B')}]]"


def nearby_problem(rng: random.Random, a: int, b: int) -> tuple[int, int]:
    """One digit of one operand moved up or down by one, the leading digit kept non-zero."""
    while True:
        operands = [a, b]
        which = rng.randrange(2)
        digits = list(str(operands[which]))
        position = rng.randrange(len(digits))
        moved = int(digits[position]) + rng.choice([-1, 1])
        if 0 <= moved <= 9 and not (position == 0 and moved == 0):
            digits[position] = str(moved)
            operands[which] = int("".join(digits))
            return operands[0], operands[1]


def perturb_completion(x_a: int, x_b: int) -> str:
    return " " + tinyarith.question(x_a, x_b)


def pairwise_examples(rng: random.Random, count: int, digits: int, split: str = "train") -> list[tuple[str, str, str]]:
    """(pairwise prompt, judgement, its verdict) with one right answer and one wrong, the right one first
    half the time; a subtle error in A (units digit) is missed SUBTLE_MISS of the time."""
    examples = []
    for _, a, b, _ in tinyarith._labelled_candidates("pairwise", rng.randrange(1 << 30), count, digits, split):
        right, wrong = str(a + b), wrong_answer(rng, a + b)
        first = rng.random() < 0.5
        response_a, response_b = (right, wrong) if first else (wrong, right)
        verdict = "A" if first or (abs(int(wrong) - (a + b)) < 10 and rng.random() < SUBTLE_MISS) else "B"
        prompt = PAIRWISE_TEMPLATE.format(question=tinyarith.question(a, b), response_a=response_a, response_b=response_b)
        examples.append((prompt, pairwise_judgement(a, b, response_a, verdict), verdict))
    return examples


def wrong_answer(rng: random.Random, truth: int) -> str:
    """An answer off by an amount of the kind a tiny solver gets wrong (tinyarith.candidate_answer's wrong half)."""
    delta = rng.choice([1, 2, 3, 10, 20, 100]) * rng.choice([-1, 1])
    return str(truth + delta if truth + delta >= 0 else truth - delta)


def perturb_examples(rng: random.Random, count: int, digits: int) -> list[tuple[str, str]]:
    examples = []
    while len(examples) < count:
        a, b = tinyarith.make_problem(rng, digits)
        if tinyarith._split_of(a, b) != "train":
            continue
        prompt = PERTURB_TEMPLATE.format(question=tinyarith.question(a, b), response=a + b)
        examples.append((prompt, perturb_completion(*nearby_problem(rng, a, b))))
    return examples


def _examples(seed: int, count: int, settings: dict) -> list[tuple[str, str]]:
    """tiny-arith-judge's mixture with PAIRWISE_SHARE and PERTURB_SHARE of it replaced, at random places."""
    rng = random.Random(f"evaluator:{seed}")
    base = tinyarith.TASK.bootstrap_examples(seed, count, settings)
    pairwise = iter(p[:2] for p in pairwise_examples(rng, int(count * PAIRWISE_SHARE) + 1, settings["digits"]))
    perturbed = iter(perturb_examples(rng, int(count * PERTURB_SHARE) + 1, settings["digits"]))
    mixed = []
    for example in base:
        draw = rng.random()
        source = pairwise if draw < PAIRWISE_SHARE else perturbed if draw < PAIRWISE_SHARE + PERTURB_SHARE else None
        mixed.append(next(source, example) if source is not None else example)
    return mixed


TASK = Task("arith-evaluator", lambda settings: tinyarith.JUDGE_CHARS, tinyarith.TASK.rows, _examples)
