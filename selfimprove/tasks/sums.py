"""The DivPO miniature's task (`builtin:sums/{train,validation,test}`): "two two-digit numbers that sum to N".

Why this task: DivPO (Lanchantin et al. 2025) is about prompts with many right answers, where preference
training collapses onto a few of them. Its persona task scores 1 for any valid JSON; here any a+b with
a, b in 10..99 and a + b = N scores 1, and N = 109 alone has 90 valid answers. The base model is
trained on a skewed choice of answers (a few favourite first addends, the rest rare) and on a share of
invalid ones, so it starts moderately diverse and not always valid: room for DPO to collapse the choice
and for DivPO to widen it while keeping validity.

Formats (character-level tokens):
    question:    "sum 137:"    (N in 20..198, the sums two two-digit numbers can make)
    completion:  " 58+79"      (valid: both addends two-digit, summing to N; "58+79" and "79+58" differ)
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections import Counter

from selfimprove.tasks import tinyarith
from selfimprove.core.stage import Builtin
from selfimprove.tasks import Task

CHARS = tinyarith.CHARS + ["s", "u", "m", ":"]  # tiny-arith's, plus the letters of "sum" and the colon
LOW, HIGH = 10, 99  # a two-digit addend
TOTALS = range(2 * LOW, 2 * HIGH + 1)  # every N with at least one valid answer
QUESTION = re.compile(r"sum (\d+):")
ANSWER = re.compile(r"(\d+)\+(\d+)")


def question(total: int) -> str:
    return f"sum {total}:"


def addends(total: int) -> range:
    """The first addends a of the valid answers a+(N-a) of N."""
    return range(max(LOW, total - HIGH), min(HIGH, total - LOW) + 1)


def _split_of(total: int) -> str:
    """A fixed partition of the N values (20% test, 10% validation, 70% train), as tinyarith._split_of."""
    bucket = zlib.crc32(question(total).encode()) % 10
    return "test" if bucket < 2 else "validation" if bucket == 2 else "train"


def totals(split: str) -> list[int]:
    return [n for n in TOTALS if _split_of(n) == split]


def rows(seed: int, size: int, split: str, data: dict) -> list[dict]:
    """`size` prompts of one split: its N values shuffled, again and again when size exceeds them (124
    train, 13 validation and 42 test values), so a prompt repeats only after every other one."""
    rng, pool, picked = random.Random(f"sums:{split}:{seed}"), totals(split), []
    while len(picked) < size:
        picked += rng.sample(pool, len(pool))
    return [{"question": question(n), "answer": None, "solution": None} for n in picked[:size]]


def favourite_addends(seed: int, total: int, settings: dict) -> list[int]:
    """The favourite first addends for N: `favourites` values drawn once per seed from 10..99, each moved
    into N's valid range (so every N has the same skew), without repeats. Global rather than per-N
    values, so the skew carries over to the held-out N values."""
    chosen = random.Random(f"sums-favourites:{seed}").sample(range(LOW, HIGH + 1), settings.get("favourites", 3))
    valid = addends(total)
    return sorted({min(max(a, valid.start), valid.stop - 1) for a in chosen})


def bootstrap_examples(seed: int, count: int, settings: dict) -> list[tuple[str, str]]:
    """(prompt, completion) pairs on the train N values. A valid answer's first addend is a favourite with
    probability `favourite_share` (default 0.75) and uniform over the other valid addends otherwise; a
    share `invalid_fraction` (default 0.1) of the answers is invalid: half a wrong sum (the second
    addend off by 1, 2 or 10, still two-digit), half a one-digit first addend (b = N - a)."""
    rng, pool = random.Random(f"sums-bootstrap:{seed}"), totals("train")
    share, invalid = settings.get("favourite_share", 0.75), settings.get("invalid_fraction", 0.1)
    examples = []
    for _ in range(count):
        total = rng.choice(pool)
        favourites = favourite_addends(seed, total, settings)
        rest = [a for a in addends(total) if a not in favourites] or favourites
        a = rng.choice(favourites if rng.random() < share else rest)
        b = total - a
        if rng.random() < invalid:
            if rng.random() < 0.5:
                b = rng.choice([c for d in (1, 2, 10) for c in (b - d, b + d) if LOW <= c <= HIGH])
            else:
                a = rng.randint(1, 9)
                b = total - a
        examples.append((question(total), f" {a}+{b}"))
    return examples




def answer_of(question_text: str, completion: str) -> str | None:
    """The completion's first a+b when it is valid for the question's N (as "a+b"), else None."""
    asked, found = QUESTION.search(question_text), ANSWER.search(completion or "")
    if asked is None or found is None:
        return None
    a, b = found.groups()
    two_digit = all(len(x) == 2 and x[0] != "0" for x in (a, b))
    return f"{a}+{b}" if two_digit and int(a) + int(b) == int(asked.group(1)) else None


def valid(question_text: str, completion: str) -> bool:
    return answer_of(question_text, completion) is not None


def reward_rule(question: str, response: str, gold) -> float:
    """The rule-based quality signal (the persona task's "valid JSON = 1"): 1.0 if valid, else 0.0."""
    return 1.0 if valid(question, response) else 0.0


def entropy_bits(answers: list[str]) -> float:
    """Shannon entropy in bits of the empirical distribution of the answers; 0 for none."""
    counts, total = Counter(answers), len(answers)
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def _sd(values: list[float]) -> float:
    """The sample standard deviation (n - 1); 0 for fewer than two values."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def diversity_figures(prompts_completions: dict[str, list[str]]) -> dict:
    """Over prompts with k samples each: validity = valid samples / all samples; distinct_valid = the mean
    number of distinct valid answers per prompt; entropy = the mean, per prompt, of the entropy in bits of
    its valid answers' distribution (a prompt with no valid sample counts, with entropy 0 and 0 distinct).
    The *_sd figures are the sample standard deviations over prompts of the per-prompt values (validity:
    the prompt's share of valid samples), for intervals over prompts: mean +- 1.96 * sd / sqrt(prompts)
    (samples of one prompt are correlated, so an interval over samples would be too narrow)."""
    per_prompt = [[x for c in completions if (x := answer_of(q, c)) is not None]
                  for q, completions in prompts_completions.items()]
    sizes = [len(c) for c in prompts_completions.values()]
    prompts, samples = len(per_prompt), sum(sizes)
    validity = [len(v) / n for v, n in zip(per_prompt, sizes) if n]
    distinct = [len(set(v)) for v in per_prompt]
    entropy = [entropy_bits(v) for v in per_prompt]
    return {"prompts": prompts, "samples": samples,
            "validity": sum(map(len, per_prompt)) / samples if samples else 0.0,
            "distinct_valid": sum(distinct) / prompts if prompts else 0.0,
            "entropy": sum(entropy) / prompts if prompts else 0.0,
            "validity_sd": _sd(validity), "distinct_valid_sd": _sd(distinct), "entropy_sd": _sd(entropy)}


def metrics(records: list[dict], samples: list[list[str]]) -> dict:
    """The evaluation of evaluate.k samples per held-out prompt: validity, distinct valid answers and
    their entropy (a prompt asked twice counts once, with all its samples)."""
    pooled: dict[str, list[str]] = {}
    for record, texts in zip(records, samples):
        pooled.setdefault(record["question"], []).extend(texts)
    return {f"sums_{key}": value for key, value in diversity_figures(pooled).items()}


TASK = Task("sums", CHARS, rows, bootstrap_examples, metrics)
# The DivPO miniature's base model: bootstrapped on the sums task (its skewed answers, 10% invalid).
# 1,500 steps (chosen on the validation N values, README): at 600 steps the model has memorised b = N - a
# for the favourite addends only (validity 30%, and 9% for the other addends), so any move away from the
# favourites costs validity; at 1,500 it is 53% valid (37% on the other addends), 3.9 distinct valid
# answers of 16; 3,000 steps were no better (46%).
TINY_SUMS = Builtin("tiny-sums", "selfimprove.stages.bootstrap", {"task": "sums", "steps": 1500, "layers": 2},
                    plugins=lambda settings: [("builtin task", "sums")])
