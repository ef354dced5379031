"""The Adaptive Decoding miniature's task (`builtin:mixed/{train,validation,test}`): a mixed prompt set where
no one temperature is best for everything.

Adaptive Decoding (Dhuliawala et al. 2024) learns low temperatures for GSM8K and high ones for creative
writing, and beats every fixed temperature on the mix (UltraMathStories). Here the two kinds are:

    exact:    tinyarith's sums, "47+38=" -> " 7+8=15 r5; 4+3+1=8 r85; #### 85"  (rewarded for the right answer:
              greedy is best, every sampled step can go wrong)
    variety:  the sums task's "sum 137:" -> " 58+79"  (rewarded for a valid answer that no other sample of the
              prompt gave: greedy repeats one answer, so some temperature is needed)

Rows alternate between the kinds in a seeded order (half each) and carry `kind`, which the samples, the
scores and the evaluation keep as prompt_kind. Exact rows have a gold answer; variety rows have none.
The builtin model `tiny-mixed` is bootstrapped on both (half its examples each). Its sums are worked 70%
of the time and direct 30% (direct_fraction 0.3): greedy decoding takes the worked path and is right 87%
of the time on validation, while sampling takes the direct guess more often the hotter it is (60% right
at T 1.0). Its variety answers start with a favourite first addend 30% of the time, else any valid one.
Both were chosen on the validation split (README, "Adaptive Decoding, in miniature").
"""

from __future__ import annotations

import random

from selfimprove.tasks import tinyarith
from selfimprove.tasks.answers import extract_final, same_answer
from selfimprove.core.stage import Builtin
from selfimprove.tasks import Task, sums

CHARS = sums.CHARS  # tinyarith's characters, plus those of "sum" and the colon
KINDS = ("exact", "variety")
# The bootstrap's variety answers: a favourite first addend 30% of the time, else uniform (README, miniature).
FAVOURITE_SHARE = 0.3


def rows(seed: int, size: int, split: str, data: dict) -> list[dict]:
    """`size` rows of one split, each exact or variety with probability 1/2 (a seeded draw per row that
    does not depend on size, so a longer pool extends a shorter one)."""
    draws = random.Random(f"mixed-kinds:{split}:{seed}")
    kinds = [KINDS[draws.random() < 0.5] for _ in range(size)]
    exact = iter(tinyarith.problems(seed, kinds.count("exact"), data["digits"], split))
    variety = iter(sums.rows(seed, kinds.count("variety"), split, data))
    return [{**next(exact if kind == "exact" else variety), "kind": kind} for kind in kinds]


def bootstrap_examples(seed: int, count: int, settings: dict) -> list[tuple[str, str]]:
    """Half tinyarith's solving examples (settings digits, direct_fraction), half the sums task's, shuffled."""
    half = count // 2
    variety = {"favourite_share": FAVOURITE_SHARE, "invalid_fraction": 0.1}
    examples = (tinyarith.bootstrap_examples(seed, count - half, settings["digits"], settings["direct_fraction"])
                + sums.bootstrap_examples(seed, half, variety))
    random.Random(f"mixed-bootstrap:{seed}").shuffle(examples)
    return examples


def correct_or_distinct(question: str, responses: list[str], gold, settings: dict) -> list[float]:
    """The scores of one prompt's responses: with a gold answer, 1.0 for the right final answer; without,
    1.0 for a valid answer to "sum N:" that no other response of the prompt gave (valid and unseen).
    A per-prompt rule: the reward stage calls it with all of a prompt's responses at once."""
    if gold is not None:
        return [1.0 if same_answer(extract_final(r), gold) else 0.0 for r in responses]
    answers = [sums.answer_of(question, r) for r in responses]
    return [1.0 if a is not None and answers.count(a) == 1 else 0.0 for a in answers]


correct_or_distinct.per_prompt = True

TASK = Task("mixed", CHARS, rows, bootstrap_examples)
# The Adaptive Decoding miniature's base model (README, "Adaptive Decoding in miniature").
TINY_MIXED = Builtin("tiny-mixed", "selfimprove.stages.bootstrap",
                     {"task": "mixed", "direct_fraction": 0.3, "steps": 2000, "layers": 2},
                     plugins=lambda settings: [("builtin task", "mixed")])
