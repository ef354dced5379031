"""The tiny meta-judge's training examples: builtin:tiny-arith-metajudge's stepwise format, and
builtin:tiny-arith-judge's examples left exactly as they were (they seed the landed judge-loop tables)."""

import hashlib
import json

from selfimprove.scoring import judging
from selfimprove.tasks import tinyarith
from selfimprove.core.registry import resolve
from selfimprove.stages import bootstrap

WINNER = r"Winner:\s*([AB])"  # metajudge.winner_pattern's default


def builtin_settings(name: str) -> dict:
    return {key: setting.default for key, setting in bootstrap.SETTINGS.items()} | resolve("builtin model", name).settings


def bootstrap_examples(name: str) -> list[tuple[str, str]]:
    settings = builtin_settings(name)
    task = resolve("builtin task", settings["task"])
    return task.bootstrap_examples(settings["seed"], settings["steps"] * settings["batch_size"], settings)


def test_the_judging_variants_examples_are_unchanged():
    """Hashes of the examples as they were before meta_format existed (computed from that code)."""
    digest = hashlib.sha256(json.dumps(bootstrap_examples("tiny-arith-judge")).encode()).hexdigest()
    assert digest == "cd4ea02c1998f12caa9d80ee7faf1868f850fa0167cd984f8fd693fc71734c5b"
    held_out = tinyarith.meta_examples(0, 200, 3, "validation")
    assert hashlib.sha256(json.dumps(held_out).encode()).hexdigest() == \
        "a2f71f7b92b1f28ff82417ec238eba171b9004ea757731c3916eda248de5e4ba"


def test_the_new_settings_default_to_the_old_behaviour():
    judge = builtin_settings("tiny-arith-judge")
    assert judge["meta_format"] == "winner" and judge["positions"] == 128
    # At their defaults they stay out of params.yaml, so existing projects re-run nothing.
    assert bootstrap.SETTINGS["meta_format"].omit_default and bootstrap.SETTINGS["positions"].omit_default


def test_compare_format_writes_its_score_then_the_mark_the_winner_is_read_from():
    # 47+38=85; the candidate 84 is wrong, so the right judgement is the one that scored 1.
    text = tinyarith.meta_judgement(47, 38, "84", 5, 1, "compare")
    assert text == " 7+8=15 r5; 4+3+1=8 r85; 84 vs 85: 8=8, 4/5. Score: 1 A:5 1/5 Winner: B"
    assert tinyarith.meta_judgement(47, 38, "84", 1, 5, "compare").endswith("Score: 1 A:1 1=1 Winner: A")
    assert tinyarith.meta_judgement(47, 38, "85", 5, 1, "compare").endswith("Score: 5 A:5 5=5 Winner: A")
    # The old format names the same winner without the steps.
    assert tinyarith.meta_judgement(47, 38, "84", 5, 1) == " 7+8=15 r5; 4+3+1=8 r85; 84 vs 85: 8=8, 4/5. Winner: B"
    # The stage's parser reads the winner, not the score before it.
    assert judging.parse_verdict(text, WINNER) == "B"


def test_the_winner_follows_the_digit_comparison_not_the_position():
    examples = tinyarith.meta_examples(0, 2000, 3, meta_format="compare")
    winners = [judging.parse_verdict(completion, WINNER) for _, completion in examples]
    assert 0.45 < winners.count("A") / len(winners) < 0.55  # balanced over positions
    cells = set()
    for (prompt, completion), winner in zip(examples, winners):
        comparison = completion.split(" vs ", 1)[1].split(".", 1)[0]
        answer_right = "/" not in comparison  # every digit of the candidate agrees with the sum
        score_a = int(prompt.split(" A:", 1)[1][0])
        a_scored_right = score_a == (tinyarith.RIGHT_SCORE if answer_right else tinyarith.WRONG_SCORE)
        assert winner == ("A" if a_scored_right else "B")
        cells.add((answer_right, winner))
    assert cells == {(True, "A"), (True, "B"), (False, "A"), (False, "B")}  # neither alone decides it


def test_the_metajudge_builtin_mixes_more_stepwise_meta_examples_that_fit_its_positions():
    settings = builtin_settings("tiny-arith-metajudge")
    examples = bootstrap_examples("tiny-arith-metajudge")
    meta = [(p, c) for p, c in examples if p.endswith(" meta:")]
    assert 0.28 < len(meta) / len(examples) < 0.32
    assert all(" A:" in c and "Winner: " in c for _, c in meta)
    judged = [p for p, _ in examples if p.endswith(" judge:")]
    assert 0.43 < len(judged) / len(examples) < 0.47
    # Characters are tokens; with the beginning and end of sequence every example fits.
    assert max(len(p) + len(c) for p, c in examples) + 2 <= settings["positions"]
    # The judging variant's examples do not: the compare format needs the longer model.
    assert max(len(p) + len(c) for p, c in meta) + 2 > builtin_settings("tiny-arith-judge")["positions"]
