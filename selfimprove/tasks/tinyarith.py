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

The judging variant (`builtin:tiny-arith-judge`, the miniature of Self-Rewarding's seed model, trained
on instruction data plus judge data) also learns to grade a candidate answer with the additive
rubric's last line, after checking it by worked steps and a digit-by-digit comparison:
    judge prompt:  "47+38=84 judge:"
    judgement:     " 7+8=15 r5; 4+3+1=8 r85; 84 vs 85: 8=8, 4/5. Score: 1"
and, as a meta-judge, to say which of two judgements of an answer is right:
    meta prompt:   "47+38=84 A:5 B:1 meta:"
    completion:    " 7+8=15 r5; 4+3+1=8 r85; 84 vs 85: 8=8, 4/5. Winner: B"
Writing the comparison digit by digit is what makes the score follow the model's own check: with only
"84 vs 85. Score: N" a 0.9M-parameter judge stayed at chance (issue 4's measurements).

That meta completion asks for an exclusive-or in one token (A wins when A's score is 5 exactly when the
check finds the answer right), and the tiny model never learnt it: it says `B` whatever it is shown
(README). `builtin:tiny-arith-metajudge` is trained on meta_format "compare" instead, which writes the
steps out, each one local: its own score (as a judgement ends), A's score copied from the prompt, the
two compared the way the check compares digits, and the winner read off that mark:
    completion:    " 7+8=15 r5; 4+3+1=8 r85; 84 vs 85: 8=8, 4/5. Score: 1 A:5 1/5 Winner: B"
Measured: the mark and the winner then follow the written scores every time, but the model does not learn
to copy A's score from the prompt (it writes `A:5` whatever the prompt says), so the verdict is still at
chance; what the prompt's scores say is what neither format gets the 0.8M-parameter model to read.
"""

from __future__ import annotations

import random
import zlib

from selfimprove.tasks import Task

CHARS = list("0123456789+=#;r ")
# The judging variant reads and writes words ("judge:", "Score:"): printable ASCII, appended after CHARS.
JUDGE_CHARS = CHARS + [chr(c) for c in range(32, 127) if chr(c) not in CHARS]
JUDGE_TEMPLATE = "{question}{response} judge:"  # what the judge is shown; {response} is the final answer
RIGHT_SCORE, WRONG_SCORE = 5, 1  # the rubric's points for a right answer, and for a relevant wrong one
# The meta-judge (Meta-Rewarding) is shown two judgements of one answer, by their scores (whole
# judgements would not fit the model's 128 positions), checks the answer itself and names the more
# accurate judgement.
META_TEMPLATE = "{question}{response} A:{score_a} B:{score_b} meta:"
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


def bootstrap_examples(seed: int, count: int, digits: int, direct_fraction: float,
                       judge_fraction: float = 0.0, meta_fraction: float = 0.0,
                       meta_format: str = "winner") -> list[tuple[str, str]]:
    """(prompt, completion) pairs for pretraining the tiny model on the train partition; shares
    judge_fraction and meta_fraction of them are judge and meta-judge examples (the judging variant)."""
    rng = random.Random(f"bootstrap:{seed}:{digits}")
    judging = iter([(p, c) for p, c, _ in judge_examples(seed, int(count * judge_fraction) + 1, digits)])
    meta = iter(meta_examples(seed, int(count * meta_fraction) + 1, digits, meta_format=meta_format)
                if meta_fraction else [])
    examples = []
    while len(examples) < count:
        draw = rng.random() if judge_fraction or meta_fraction else 1.0
        source = judging if draw < judge_fraction else meta if draw < judge_fraction + meta_fraction else None
        if source is not None:
            example = next(source, None)
            if example is not None:
                examples.append(example)
                continue
        a, b = make_problem(rng, digits)
        if _split_of(a, b) != "train":
            continue
        solve = direct_solution if rng.random() < direct_fraction else worked_solution
        examples.append((question(a, b), solve(a, b)))
    return examples


def comparison(candidate: str, truth: int) -> str:
    """'148 vs 159: 1=1, 4/5, 8/9' - digits right-aligned (zero-padded), '=' where they agree."""
    width = max(len(candidate), len(str(truth)))
    left, right = candidate.zfill(width), str(truth).zfill(width)
    marks = ", ".join(f"{x}={y}" if x == y else f"{x}/{y}" for x, y in zip(left, right))
    return f"{left} vs {right}: {marks}"


def check(a: int, b: int, candidate: str) -> tuple[str, int]:
    """(the worked steps and digit comparison, the score they lead to): what judge and meta-judge write."""
    steps = worked_solution(a, b).rsplit(" #### ", 1)[0]
    score = RIGHT_SCORE if candidate == str(a + b) else WRONG_SCORE
    return f"{steps} {comparison(candidate, a + b)}.", score


def judgement(a: int, b: int, candidate: str) -> str:
    """The judge's completion: re-derive the sum by worked steps, compare, score."""
    checked, score = check(a, b, candidate)
    return f"{checked} Score: {score}"


META_FORMATS = ("winner", "compare")  # the meta completion: the winner right after the check, or reached by steps


def meta_judgement(a: int, b: int, candidate: str, score_a: int, score_b: int, meta_format: str = "winner") -> str:
    """The meta-judge's completion: the same check as a judgement, then the judgement whose score is right.
    Format "compare" first writes its own score and compares A's with it (`1/5`: differ, `5=5`: agree),
    so the winner is read off the mark just written: A when they agree."""
    checked, score = check(a, b, candidate)
    winner = "A" if score_a == score else "B"
    if meta_format == "compare":
        return f"{checked} Score: {score} A:{score_a} {score}{'=' if score == score_a else '/'}{score_a} Winner: {winner}"
    return f"{checked} Winner: {winner}"


def candidate_answer(rng: random.Random, truth: int) -> str:
    """Right half the time, else off by a small amount of the kind a tiny solver gets wrong (a unit, a
    dropped or doubled carry in some column)."""
    if rng.random() < 0.5:
        return str(truth)
    delta = rng.choice([1, 2, 3, 10, 20, 100]) * rng.choice([-1, 1])
    return str(max(0, truth + delta))


def _labelled_candidates(tag: str, seed: int, count: int, digits: int, split: str):
    """(rng, a, b, candidate) for `count` problems of one part of the partition."""
    rng = random.Random(f"{tag}:{split}:{seed}:{digits}")
    made = 0
    while made < count:
        a, b = make_problem(rng, digits)
        if _split_of(a, b) != split:
            continue
        made += 1
        yield rng, a, b, candidate_answer(rng, a + b)


def meta_examples(seed: int, count: int, digits: int, split: str = "train",
                  meta_format: str = "winner") -> list[tuple[str, str]]:
    """(meta prompt, completion) pairs: one judgement scores the candidate rightly, the other wrongly, in
    a random order (so A and B win equally often, and the winner follows the check, not the position)."""
    examples = []
    for rng, a, b, candidate in _labelled_candidates("meta", seed, count, digits, split):
        right = check(a, b, candidate)[1]
        wrong = WRONG_SCORE if right == RIGHT_SCORE else RIGHT_SCORE
        score_a, score_b = (right, wrong) if rng.random() < 0.5 else (wrong, right)
        prompt = META_TEMPLATE.format(question=question(a, b), response=candidate, score_a=score_a, score_b=score_b)
        examples.append((prompt, meta_judgement(a, b, candidate, score_a, score_b, meta_format)))
    return examples


def judge_examples(seed: int, count: int, digits: int, split: str = "train") -> list[tuple[str, str, bool]]:
    """(judge prompt, judgement, candidate is right) triples from one part of the partition."""
    return [(JUDGE_TEMPLATE.format(question=question(a, b), response=candidate), judgement(a, b, candidate),
             candidate == str(a + b)) for _, a, b, candidate in _labelled_candidates("judge", seed, count, digits, split)]


def _task_chars(settings: dict) -> list[str]:
    """The solving-only model keeps its small vocabulary, so its weights (and results) do not move."""
    return JUDGE_CHARS if settings["judge_fraction"] or settings["meta_fraction"] else CHARS


def _task_rows(seed: int, size: int, split: str, data: dict) -> list[dict]:
    return problems(seed, size, data["digits"], split)


def _task_examples(seed: int, count: int, settings: dict) -> list[tuple[str, str]]:
    return bootstrap_examples(seed, count, settings["digits"], settings["direct_fraction"], settings["judge_fraction"],
                              settings["meta_fraction"], settings.get("meta_format", "winner"))


TASK = Task("arith", _task_chars, _task_rows, _task_examples)
