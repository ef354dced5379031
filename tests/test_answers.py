"""One parser decides both what a sample voted for and whether it was right."""

import pytest

from selfimprove.tasks.answers import extract_final, same_answer


@pytest.mark.parametrize("text, expected", [
    (" 7+8=15 r5; 4+3+1=8 r85; #### 85", "85"),           # tiny-arith worked steps
    (" #### 1,234", "1234"),                                # GSM8K thousands separator
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),       # GSM8K gold solution
    ("so the answer is 12.50", "12.5"),                     # no marker: the last number
    ("#### -3", "-3"),
    (" 7+8=15 r5; 4+3", "3"),                               # truncated: last number, a wrong vote, not None
    ("no digits at all", None),                             # a parse failure is never a guess
    ("#### ", None),
])
def test_extract_final(text, expected):
    assert extract_final(text) == expected


def test_same_answer_exact_for_integers_and_math_verify_otherwise():
    assert same_answer("85", "85")
    assert not same_answer("84", "85")
    assert not same_answer(None, "85")
    assert same_answer("0.5", "1/2")  # not plain numbers on both sides: math-verify decides
