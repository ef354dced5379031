"""Self-RIP (Yu et al. 2025, section 3.2): new prompts written by the model itself, Self-Instruct style.

The seed model is shown 8 random RIP-kept prompts as numbered few-shot examples and continues the list
(T = 0.8, top-p = 0.95 in the paper); its next item is a candidate prompt. Candidates whose ROUGE-L
F-measure against any existing prompt, or against a candidate already kept, reaches 0.7 are dropped as
near-duplicates; the survivors are paired and filtered by RIP again. Pure functions: the stage that
samples and writes the synthetic pool is wired elsewhere.

    from selfimprove.stages.selfrip import pick_examples, fewshot_prompt, parse_new_prompt, dedupe
    prompt = fewshot_prompt(pick_examples(kept_prompts, seed=0))
    kept, dropped = dedupe([p for t in completions if (p := parse_new_prompt(t))], kept_prompts)
"""

from __future__ import annotations

import random
import re
from collections import Counter

HEADER = "Come up with a new task like these."  # Self-Instruct's instruction, shortened
INSTRUCTION_FORMAT = "Task {index}: {prompt}"  # one numbered example; {index} counts from 1
FEWSHOT = 8  # the paper's number of few-shot examples
DUPLICATE = 0.7  # the paper's ROUGE-L threshold (and Self-Instruct's)
_EPSILON = 1e-9  # 2PR/(P+R) in floats can land a hair under an exact 0.7; that still counts as reaching it


def pick_examples(prompts: list[str], seed: int, k: int = FEWSHOT) -> list[str]:
    """k distinct kept prompts at random (all of them when fewer), in a seeded order."""
    return random.Random(seed).sample(list(prompts), min(k, len(prompts)))


def fewshot_prompt(examples: list[str], instruction_format: str = INSTRUCTION_FORMAT, header: str = HEADER) -> str:
    """The header, one numbered line per example, then the next number's line left open for the model:

        Come up with a new task like these.
        Task 1: 47+38=
        ...
        Task 9: """
    if not examples:
        raise ValueError("fewshot_prompt needs at least one example prompt")
    lines = [header] if header else []
    # A newline inside an example would read as the end of its item: keep each example on one line.
    lines += [instruction_format.format(index=i, prompt=" ".join(p.split())) for i, p in enumerate(examples, 1)]
    lines.append(instruction_format.format(index=len(examples) + 1, prompt=""))
    return "\n".join(lines)


def parse_new_prompt(text: str, instruction_format: str = INSTRUCTION_FORMAT) -> str | None:
    """The candidate prompt in a continuation of `fewshot_prompt`: its first line, cut where the model
    starts another numbered item on the same line; None when nothing is left (an empty item, or a model
    that only wrote the next header)."""
    before, _, after = instruction_format.partition("{index}")
    header = re.escape(before) + r"\d+" + re.escape(after.split("{prompt}", 1)[0].rstrip())
    line = text.split("\n", 1)[0]
    # "12+3=  Task 10: 5+5=" -> "12+3="; a header at the start leaves nothing
    line = re.split(r"(?:^|\s)" + header + r"(?:\s|$)", line, maxsplit=1)[0].strip()
    return line or None


class PromptTokenizer:
    """ROUGE's tokens for prompts that are sums as well as sentences: lowercased runs of letters are
    words, and each digit and each other non-space character is a token of its own.

    rouge_score's default tokenizer keeps only [a-z0-9] runs: "47+38=" becomes ["47", "38"], so
    "47++38=" and "47+38=" (a malformed prompt and a good one) would score 1.0, and "47+39=" would share
    nothing with "47+38=". Per character, "47+39=" vs "47+38=" is LCS 5 of 6 tokens (F = 0.83, a near-
    duplicate at 0.7) while two changed digits, "47+12=", give 4 of 6 (0.67, a new problem). Whitespace
    separates tokens and is never one, so "47+3 8=" counts as "47+38="."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"[a-z]+|[^\sa-z]", text.lower())


def _scorer():
    from rouge_score import rouge_scorer  # lazy: it imports nltk

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=PromptTokenizer())


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure of two prompts: 2 LCS / (len a + len b) over PromptTokenizer's tokens."""
    return _scorer().score(a, b)["rougeL"].fmeasure


def dedupe(candidates: list[str], existing: list[str], threshold: float = DUPLICATE) -> tuple[list[str], list[str]]:
    """(kept, dropped), both in the candidates' order: a candidate is dropped when its ROUGE-L F-measure
    against any existing prompt or any candidate kept before it is >= threshold.

    Comparing every pair in pure Python is quadratic; a pair is scored only when an upper bound on its
    F-measure reaches the threshold: the LCS is at most the tokens the two share as multisets, so
    F <= 2 * shared / (len a + len b). The bound never skips a pair that could match."""
    scorer, tokenizer = _scorer(), PromptTokenizer()
    pool = [(text, Counter(tokenizer.tokenize(text))) for text in existing]
    kept, dropped = [], []
    for candidate in candidates:
        counts = Counter(tokenizer.tokenize(candidate))
        size = sum(counts.values())

        def near(text: str, other: Counter) -> bool:
            total = size + sum(other.values())
            if not total or 2 * sum((counts & other).values()) / total < threshold - _EPSILON:
                return False
            return scorer.score(text, candidate)["rougeL"].fmeasure >= threshold - _EPSILON

        if any(near(text, other) for text, other in pool):
            dropped.append(candidate)
        else:
            kept.append(candidate)
            pool.append((candidate, counts))
    return kept, dropped
