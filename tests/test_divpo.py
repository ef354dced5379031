"""DivPO's pair rule (selfimprove/rules/divpo.py) and its miniature's task (selfimprove/tasks/sums.py):
offline, every expected number worked out by hand in the comments."""

import random
from collections import defaultdict

import pytest

from selfimprove.core.errors import UserError
from selfimprove.scoring.rules import divpo as rule
from selfimprove.tasks import SPLITS, sums


def record(responses, scores, id=0, **extra):
    """A scorer record (one judgement per response, so scores == mean_scores)."""
    return {"id": id, "prompt": "sum 137:", "question": "sum 137:", "gold": None, "completions": list(responses),
            "responses": list(responses), "unsplittable": [False] * len(responses),
            "scores": [[s] if s is not None else [] for s in scores], "mean_scores": list(scores),
            "correct": [None] * len(responses), **extra}


def settings(rho=0.0, diversity="word_frequency"):
    return {"rho": rho, "diversity": diversity}


# Hand-made: scores 1, 1, 0.5, 0, 0 and judge diversity 0.2, 0.9, 0.95, 0.1, 0.6.
BANDED = record([" a", " b", " c", " d", " e"], [1.0, 1.0, 0.5, 0.0, 0.0], diversity=[0.2, 0.9, 0.95, 0.1, 0.6])


@pytest.mark.parametrize("rho, chosen, rejected", [
    (0.0, " b", " d"),    # Y_c = {a, b} (r >= 1): most diverse b (0.9); Y_r = {d, e} (r <= 0): least diverse d (0.1)
    (0.25, " b", " d"),   # r >= 0.75 and r <= 0.25: the same pools
    (0.5, " c", " d"),    # Y_c = {a, b, c} (r >= 0.5): c (0.95); Y_r = {c, d, e} (r <= 0.5): d (0.1)
])
def test_chosen_and_rejected_pools(rho, chosen, rejected):
    pairs, stats = rule.divpo([BANDED], settings(rho, "judge"), random.Random(0))
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(chosen, rejected)]
    assert pairs[0]["chosen_diversity"] == {" b": 0.9, " c": 0.95}[chosen] and pairs[0]["rejected_diversity"] == 0.1
    assert pairs[0]["source"] == "divpo" and pairs[0]["weight"] == 1.0 and not pairs[0]["rejected_from_extra"]
    assert stats["pairs"] == 1 and stats["dropped_no_spread"] == 0


def test_word_frequency_values():
    # words: [the, cat, the, dog] and [a, dog]; counts the 2, cat 1, dog 2, a 1
    # D1 = (1/2 + 1 + 1/2 + 1/2) / 4 = 0.625; D2 = (1 + 1/2) / 2 = 0.75; no words: 0
    assert rule.words("The cat, the DOG!") == ["the", "cat", "the", "dog"]
    assert rule.words(" 58+79") == ["58", "79"]
    assert rule.word_frequency_diversity(["The cat, the DOG!", "a dog", " "]) == [0.625, 0.75, 0.0]


def test_word_frequency_pool_skips_unscored():
    # the unscored middle response takes no part in the counts: 58, 79, 60, 77 each occur once -> D = 1
    values = rule.diversity_values(record([" 58+79", " 58+79", " 60+77"], [1.0, None, 1.0]), [0, 2], "word_frequency")
    assert values == {0: 1.0, 2: 1.0}


def test_word_frequency_pair():
    # counts 58: 3, 79: 2, 60, 77, 5, 132, 78: 1 -> D = 5/12, 5/12, 1, 1, 2/3
    # rho 0: Y_c = the three valid ones -> " 60+77" (1); Y_r = {" 5+132", " 58+78"} -> " 58+78" (2/3)
    r = record([" 58+79", " 58+79", " 60+77", " 5+132", " 58+78"], [1.0, 1.0, 1.0, 0.0, 0.0])
    assert rule.diversity_values(r, [0, 1, 2, 3, 4], "word_frequency") == {
        0: pytest.approx(5 / 12), 1: pytest.approx(5 / 12), 2: 1.0, 3: 1.0, 4: pytest.approx(2 / 3)}
    pairs, stats = rule.divpo([r], settings(0.0), random.Random(0))
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == (" 60+77", " 58+78")
    assert stats["mean_chosen_diversity"] == 1.0 and stats["mean_rejected_diversity"] == pytest.approx(2 / 3)
    assert stats["mean_chosen_score"] == 1.0 and stats["mean_rejected_score"] == 0.0


def test_probability_picks_the_least_likely_chosen():
    # D = -logprob: chosen = the lowest logprob of the valid ones (-7.5), rejected = the highest of the rest (-2)
    r = record([" a", " b", " c", " d", " e"], [1.0, 1.0, 1.0, 0.0, 0.0], logprobs=[-3.0, -7.5, -1.0, -2.0, -9.0])
    pairs, _ = rule.divpo([r], settings(0.0, "probability"), random.Random(0))
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == (" b", " d")
    assert (pairs[0]["chosen_diversity"], pairs[0]["rejected_diversity"]) == (7.5, 2.0)
    # a response without a logprob takes no part: the next least likely (-3) is chosen
    r["logprobs"][1] = None
    assert rule.divpo([r], settings(0.0, "probability"), random.Random(0))[0][0]["chosen"] == " a"


def test_ties_are_broken_by_the_rng():
    r = record([" a", " b", " c"], [1.0, 1.0, 0.0], diversity=[0.5, 0.5, 0.0])
    chosen = {rule.divpo([r], settings(0.0, "judge"), random.Random(seed))[0][0]["chosen"] for seed in range(40)}
    assert chosen == {" a", " b"}
    same = [rule.divpo([r] * 10, settings(0.0, "judge"), random.Random(7))[0] for _ in range(2)]
    assert same[0] == same[1]


def test_overlapping_pools_never_pair_a_text_with_itself():
    # rho 1: both pools hold both responses, of equal diversity: whichever is chosen, the other is rejected
    r = record([" a", " b"], [1.0, 0.0], diversity=[0.3, 0.3])
    for seed in range(10):
        p = rule.divpo([r], settings(1.0, "judge"), random.Random(seed))[0][0]
        assert {p["chosen"], p["rejected"]} == {" a", " b"}
    # rho 0.5: Y_c = {0, 2}, Y_r = {0, 1}; chosen 0 (0.9) but Y_r holds only its text " x": keep the least
    # diverse of Y_r as rejected (1, 0.5) and choose the next most diverse of Y_c with another text (2, 0.1)
    r = record([" x", " x", " y"], [0.5, 0.0, 1.0], diversity=[0.9, 0.5, 0.1])
    pairs, stats = rule.divpo([r], settings(0.5, "judge"), random.Random(0))
    assert (pairs[0]["chosen"], pairs[0]["chosen_score"], pairs[0]["rejected_score"]) == (" y", 1.0, 0.0)
    # one text only: nothing to pair, dropped
    pairs, stats = rule.divpo([record([" x", " x"], [1.0, 0.0], diversity=[0.1, 0.2])], settings(1.0, "judge"),
                              random.Random(0))
    assert pairs == [] and stats["dropped_no_spread"] == 1


def test_chosen_below_rejected_is_counted():
    # rho 0.5: Y_c = {a} (r >= 0.5), so a is chosen; rho 1: both pools are {a, b}, and the more diverse
    # (b, score 0) is chosen over a (score 1)
    r = record([" a", " b"], [1.0, 0.0], diversity=[0.1, 0.9])
    assert rule.divpo([r], settings(0.5, "judge"), random.Random(0))[1]["chosen_below_rejected"] == 0
    pairs, stats = rule.divpo([r], settings(1.0, "judge"), random.Random(0))
    assert (pairs[0]["chosen"], stats["chosen_below_rejected"]) == (" b", 1)


def test_dropped_prompts():
    records = [record([" a", " b", " c"], [1.0, 1.0, 1.0], id=0),  # all equal
               record([" a", " b"], [1.0, None], id=1),              # one scored response
               record([], [], id=2),                                 # nothing
               record([" a", " b"], [1.0, 0.0], id=3)]               # a pair
    pairs, stats = rule.divpo(records, settings(0.0), random.Random(0))
    assert [p["id"] for p in pairs] == [3]
    assert (stats["prompts"], stats["pairs"], stats["dropped_no_spread"]) == (4, 1, 3)
    empty = rule.divpo(records[:3], settings(0.0), random.Random(0))[1]
    assert empty["pairs"] == 0 and empty["mean_chosen_diversity"] == empty["mean_chosen_score"] == 0.0


def test_missing_logprobs_and_judge_values_are_user_errors():
    r = record([" a", " b"], [1.0, 0.0])
    with pytest.raises(UserError, match="generate.logprobs: true"):
        rule.divpo([r], settings(0.0, "probability"), random.Random(0))
    with pytest.raises(UserError, match="put the diversity stage before pairs"):
        rule.divpo([r], settings(0.0, "judge"), random.Random(0))


def test_declarations():
    assert rule.divpo.needs == "scores"
    setting = rule.SETTINGS["diversity"]
    assert setting.default == "word_frequency" and setting.choices == ("probability", "word_frequency", "judge")


def test_sums_rows_disjoint_and_deterministic():
    questions = {split: {r["question"] for r in sums.rows(0, 300, split, {})} for split in SPLITS}
    assert all(not questions[a] & questions[b] for a in SPLITS for b in SPLITS if a < b)
    assert set().union(*questions.values()) == {sums.question(n) for n in range(20, 199)}  # 300 covers each split
    assert sums.rows(3, 50, "test", {}) == sums.rows(3, 50, "test", {}) != sums.rows(4, 50, "test", {})
    train = sums.rows(0, len(sums.totals("train")), "train", {})
    assert len({r["question"] for r in train}) == len(train)  # no repeat before every N came once
    assert all(r["answer"] is None and r["solution"] is None for r in train)
    assert sums.TASK.name == "sums" and sums.TASK.rows is sums.rows and sums.TASK.chars == sums.CHARS


@pytest.mark.parametrize("question, completion, expected", [
    ("sum 137:", " 58+79", True),
    ("sum 137:", " 79+58", True),
    ("sum 20:", " 10+10", True),
    ("sum 198:", " 99+99", True),
    ("sum 137:", " 58+79 1+2", True),   # the first a+b counts
    ("sum 137:", " 58+78", False),      # wrong sum
    ("sum 14:", " 5+9", False),         # one-digit addends
    ("sum 137:", " 5+132", False),      # one-digit and three-digit
    ("sum 20:", " 05+15", False),       # a leading zero is not two-digit
    ("sum 137:", " 137", False),        # no a+b
    ("sum 137:", "", False),
])
def test_valid(question, completion, expected):
    assert sums.valid(question, completion) is expected
    assert sums.reward_rule(question, completion, None) == (1.0 if expected else 0.0)


def test_diversity_figures():
    assert sums.entropy_bits(["a", "a", "b", "b"]) == 1.0 and sums.entropy_bits(list("abcd")) == 2.0
    assert sums.entropy_bits([]) == 0.0
    figures = sums.diversity_figures({
        "sum 137:": [" 58+79", " 58+79", " 60+77", " 60+77"],  # 4 valid, 2 distinct, entropy 1
        "sum 20:": [" 10+10", " 5+15", " 9+11", " 10+10"],     # 2 valid, 1 distinct, entropy 0
        "sum 50:": [" 1+49", " 2+48", " 50+0", " 7+43"],       # none valid: 0 distinct, entropy 0
    })
    # validity 6/12; distinct (2 + 1 + 0) / 3; entropy (1 + 0 + 0) / 3
    # per prompt: validity 1, 0.5, 0 -> sd sqrt((0.25 + 0 + 0.25) / 2) = 0.5; distinct 2, 1, 0 -> sd 1;
    # entropy 1, 0, 0 (mean 1/3) -> sd sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3)
    assert figures == {"prompts": 3, "samples": 12, "validity": 0.5, "distinct_valid": 1.0,
                       "entropy": pytest.approx(1 / 3), "validity_sd": 0.5, "distinct_valid_sd": 1.0,
                       "entropy_sd": pytest.approx(3 ** -0.5)}
    # one prompt: no spread to estimate, sd 0; nothing: all zero
    one = sums.diversity_figures({"sum 137:": [" 58+79", " 1+2"]})
    assert (one["validity"], one["validity_sd"], one["distinct_valid_sd"], one["entropy_sd"]) == (0.5, 0.0, 0.0, 0.0)
    assert sums.diversity_figures({}) == {"prompts": 0, "samples": 0, "validity": 0.0, "distinct_valid": 0.0,
                                         "entropy": 0.0, "validity_sd": 0.0, "distinct_valid_sd": 0.0,
                                         "entropy_sd": 0.0}


def test_metrics_pool_repeated_prompts():
    # "sum 137:" asked twice: its 4 samples pool (3 valid, 2 distinct); "sum 20:" 2 samples, none valid
    records = [{"question": "sum 137:"}, {"question": "sum 20:"}, {"question": "sum 137:"}]
    figures = sums.metrics(records, [[" 58+79", " 1+2"], [" 5+15", " 9+9"], [" 58+79", " 60+77"]])
    assert figures["sums_prompts"] == 2 and figures["sums_samples"] == 6
    assert figures["sums_validity"] == 0.5 and figures["sums_distinct_valid"] == 1.0
    # per-prompt validity 0.75 and 0, distinct 2 and 0: the sd of two values is their distance / sqrt(2)
    assert figures["sums_validity_sd"] == pytest.approx(0.75 / 2 ** 0.5)
    assert figures["sums_distinct_valid_sd"] == pytest.approx(2 / 2 ** 0.5)


def test_bootstrap_examples():
    examples = sums.bootstrap_examples(0, 2000, {})
    assert examples == sums.bootstrap_examples(0, 2000, {})
    assert set("".join(p + c for p, c in examples)) <= set(sums.CHARS)
    assert {p for p, _ in examples} <= {sums.question(n) for n in sums.totals("train")}
    assert abs(sum(not sums.valid(p, c) for p, c in examples) / 2000 - 0.1) < 0.02  # binomial sd 0.0067
    skewed = sums.bootstrap_examples(1, 2000, {"invalid_fraction": 0.3, "favourites": 2, "favourite_share": 1.0})
    assert abs(sum(not sums.valid(p, c) for p, c in skewed) / 2000 - 0.3) < 0.03
    answers = defaultdict(set)
    for p, c in skewed:
        if sums.valid(p, c):
            answers[p].add(c)
    assert max(map(len, answers.values())) <= 2  # favourite_share 1: only the 2 favourites per N
