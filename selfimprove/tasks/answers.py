"""Final-answer extraction and comparison, shared by voting and by correctness checks.

The same parser decides what a sample "voted" for and whether it was right, so votes and accuracy can
never disagree about what an answer is.
"""

from __future__ import annotations

import re

_HASHES = re.compile(r"####\s*([^\n]*)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalize_number(text: str) -> str | None:
    """'1,234.50' -> '1234.5'; None if text holds no number."""
    match = _NUMBER.search(text)
    if not match:
        return None
    value = match.group(0).replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value.lstrip("+") or None


def extract_final(text: str) -> str | None:
    """The final answer of a completion or a GSM8K gold solution: the number after the last '####',
    else the last number in the text. None when there is none (a parse failure, never a guess)."""
    marked = _HASHES.findall(text)
    if marked:
        return normalize_number(marked[-1])
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def has_steps(completion: str) -> bool:
    """Whether a completion writes something before its final answer (the text before its last '####',
    else before its last number): a letter or a digit, not just spaces and punctuation."""
    cut = completion.rfind("####")
    if cut < 0:
        numbers = list(_NUMBER.finditer(completion))
        cut = numbers[-1].start() if numbers else 0
    return any(ch.isalnum() for ch in completion[:cut])


def same_answer(predicted: str | None, gold: str | None) -> bool:
    """Exact match on normalized numbers; math-verify decides when either side is not a plain number."""
    if predicted is None or gold is None:
        return False
    if predicted == gold:
        return True
    if _NUMBER.fullmatch(predicted) and _NUMBER.fullmatch(gold):
        return False
    from math_verify import parse, verify

    return bool(verify(parse(gold), parse(predicted)))
