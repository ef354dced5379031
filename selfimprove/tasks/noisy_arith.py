"""`builtin:noisy-arith/<split>`: tinyarith's sums with a known share of bad prompts, the RIP miniature's pool.

    data: {prompts: builtin:noisy-arith/train, eval: builtin:arith/test, digits: 2, bad_fraction: 0.3}

RIP (Yu et al. 2025) filters prompts that are malformed, ambiguous or unanswerable, judging only by the
best-vs-worst pair the policy's samples make. To measure how precisely it does so we need a pool where
we know which prompts are bad. Each row is bad with probability `bad_fraction` (default 0.3; over 1000
rows the share is within about 3 points of it), drawn from a seeded stream so the first k rows of a
pool of n are the pool of k, as with tinyarith. A good row is tinyarith's own problem: the good rows,
in order, are exactly `tinyarith.problems(seed, count, digits, split)`. A bad row is one of
    malformed:     "47++38="  "47+="  "+38="  "47+38+="
    ambiguous:     "47+3 8="  (a space inside a number)  "47 38="  (no operator)
    unanswerable:  "47+di="   (an operand in letters, a=0 ... j=9)  "47+?="
with answer and solution None. It is made from a problem of the same part of tinyarith's partition,
and kept only if its own text hashes to that part too: "47+=" forgets b, so without the second check
the same bad text could appear in train and in test. A model bootstraps on good prompts only (it is
trained on clean data, and meets noisy prompts when it trains on its own samples).
"""

from __future__ import annotations

import random
import zlib

from selfimprove.tasks import tinyarith
from selfimprove.tasks import Task

LETTERS = "abcdefghij"  # an operand written in letters: digit d -> LETTERS[d]
EXTRA_CHARS = list(LETTERS) + ["?"]  # beyond tinyarith.CHARS; all are in tinyarith.JUDGE_CHARS


def _letters(number: str) -> str:
    return "".join(LETTERS[int(d)] for d in number)


# kind -> how a problem a+b (as strings) becomes a bad prompt. "split" needs b of two digits or more.
CORRUPTIONS = {
    "double_operator": ("malformed", lambda a, b: f"{a}++{b}="),
    "missing_right": ("malformed", lambda a, b: f"{a}+="),
    "missing_left": ("malformed", lambda a, b: f"+{b}="),
    "dangling_operator": ("malformed", lambda a, b: f"{a}+{b}+="),
    "split_number": ("ambiguous", lambda a, b: f"{a}+{b[:1]} {b[1:]}="),
    "missing_operator": ("ambiguous", lambda a, b: f"{a} {b}="),
    "letter_operand": ("unanswerable", lambda a, b: f"{a}+{_letters(b)}="),
    "unknown_operand": ("unanswerable", lambda a, b: f"{a}+?="),
}


def _text_split(text: str) -> str:
    """The part of the partition a bad prompt's text falls in: tinyarith's rule (20% test, 10%
    validation, 70% train by crc32), applied to the text. No bad text is a well-formed "a+b=", so
    it never meets a good one."""
    bucket = zlib.crc32(text.encode()) % 10
    return "test" if bucket < 2 else "validation" if bucket == 2 else "train"


def bad_row(rng: random.Random, digits: int, split: str) -> dict:
    """A bad prompt made from a problem of `split`, whose own text also falls in `split`."""
    kinds = [k for k in CORRUPTIONS if digits >= 2 or k != "split_number"]
    while True:
        a, b = tinyarith.make_problem(rng, digits)
        kind = rng.choice(kinds)
        category, make = CORRUPTIONS[kind]
        text = make(str(a), str(b))
        if tinyarith._split_of(a, b) == split and _text_split(text) == split:
            return {"question": text, "answer": None, "solution": None, "bad": True, "bad_kind": category}


def rows(seed: int, size: int, split: str, data: dict) -> list[dict]:
    """`size` rows of `split`: tinyarith's problems, a seeded share `bad_fraction` of them bad."""
    digits, fraction = data["digits"], data.get("bad_fraction", 0.3)
    if not 0 <= fraction <= 1:
        raise ValueError(f"bad_fraction must be in [0, 1], got {fraction}")
    # Two streams, one draw each per row: which rows are bad, and what they say. Neither depends on
    # `size`, so a longer pool extends a shorter one.
    flags = random.Random(f"noisy-flags:{split}:{seed}:{digits}")
    corrupt = random.Random(f"noisy-bad:{split}:{seed}:{digits}")
    bad = [flags.random() < fraction for _ in range(size)]
    good = iter(tinyarith.problems(seed, size - sum(bad), digits, split))
    return [bad_row(corrupt, digits, split) if is_bad else {**next(good), "bad": False} for is_bad in bad]


def bootstrap_examples(seed: int, count: int, settings: dict) -> list[tuple[str, str]]:
    """tinyarith's solving examples (good prompts only): settings digits and direct_fraction."""
    return tinyarith.bootstrap_examples(seed, count, settings["digits"], settings["direct_fraction"])


TASK = Task("noisy-arith", tinyarith.CHARS + EXTRA_CHARS, rows, bootstrap_examples)
