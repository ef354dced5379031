"""LIFT: word counts, the length instruction inside a prompt format, the two rules that make
length-instructed pairs, and the evaluation under a hard limit."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from selfimprove.scoring.lengths import PAPER_TEMPLATE, instructed, unwrap, word_count
from selfimprove.stages.lift import SETTINGS, length_instructed, lift

from fakes import ScriptedModel

DEFAULTS = {key: setting.default for key, setting in SETTINGS.items()}
LONG = " ".join(f"w{i}" for i in range(30))  # 30 words
SHORT = "A short answer, with punctuation!"  # 5 words


@pytest.mark.parametrize("text, words", [("Hello, world!", 2), ("don't stop", 2), (" 7+8=15 r5; 4+3+1=8 r85; #### 85", 10),
                                         (" #### 85", 1), ("", 0), ("-- ... !!", 0)])
def test_words_are_counted_without_punctuation(text, words):
    assert word_count(text) == words


def test_the_limit_goes_around_the_instruction_inside_a_chat_format():
    chat = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    prompt = chat.format(question="Name a colour.")
    assert unwrap(prompt, chat) == "Name a colour."
    assert instructed(prompt, 7, PAPER_TEMPLATE, chat) == chat.format(
        question="Answer the following instruction using 7 words or less.\n\nName a colour.")
    # a prompt not in that format is instructed as a whole
    assert instructed("Name a colour.", 7, "{max_len}:{instruction}", chat) == "7:Name a colour."


def test_a_longer_winner_keeps_its_win_under_a_loose_limit_and_loses_under_a_tight_one():
    pair = {"id": 1, "prompt": "Q", "chosen": LONG, "rejected": SHORT, "weight": 1.0}
    for seed in range(50):
        loose, tight = length_instructed(pair, DEFAULTS, random.Random(seed))
        assert loose["length_limit"] == 40 and (loose["chosen"], loose["rejected"]) == (LONG, SHORT)
        assert 5 <= tight["length_limit"] <= 29 and (tight["chosen"], tight["rejected"]) == (SHORT, LONG)
        assert tight["lift_swapped"] and not loose["lift_swapped"]
        assert tight["prompt"] == f"Answer the following instruction using {tight['length_limit']} words or less.\n\nQ"
        # the response within the limit always wins
        assert word_count(tight["chosen"]) <= tight["length_limit"] < word_count(tight["rejected"])


def test_a_shorter_winner_keeps_its_win_under_both_limits():
    pair = {"id": 1, "prompt": "Q", "chosen": SHORT, "rejected": LONG}
    limits = set()
    for seed in range(200):
        loose, tight = length_instructed(pair, DEFAULTS, random.Random(seed))
        assert all((p["chosen"], p["rejected"]) == (SHORT, LONG) for p in (loose, tight))
        limits.add(tight["length_limit"])
    assert limits == set(range(5, 30))  # drawn over the whole span between the lengths


def test_pairs_of_close_lengths_are_skipped_and_the_originals_kept():
    close = {"id": 1, "prompt": "Q", "chosen": "one two three", "rejected": "one two three four five"}
    far = {"id": 2, "prompt": "R", "chosen": LONG, "rejected": SHORT}
    out, stats = lift([close, far], DEFAULTS, random.Random(0))
    assert out[:2] == [close, far] and len(out) == 4
    assert stats == {"lift_pairs_in": 2, "lift_instructed": 2, "lift_dropped_close_lengths": 1, "lift_swapped": 1,
                     "lift_pairs_out": 4}
    out, _ = lift([close, far], dict(DEFAULTS, include_original=False), random.Random(0))
    assert [p["source"] for p in out] == ["lift", "lift"]


def test_the_evaluation_counts_a_broken_limit_as_a_wrong_answer():
    from selfimprove.scoring.lengths import length_instructed as evaluate_under_limit

    records = [{"question": "1+1=", "answer": "2"}, {"question": "2+2=", "answer": "4"},
               {"question": "3+3=", "answer": "6"}]
    outputs = {"3;1+1=": " #### 2", "3;2+2=": " 2+2=4 r4; #### 4", "3;3+3=": " #### 7"}
    backend = ScriptedModel(reply=lambda prompt, j, rng: outputs[prompt])
    settings = {"length_limit": 3, "length_template": "{max_len};{instruction}", "max_new_tokens": 8,
                "batch_size": 4, "seed": 0}
    figures = evaluate_under_limit(backend, settings, records, "{question}")
    assert figures["li_violation_rate"] == pytest.approx(1 / 3) and figures["li_correct"] == 1
    assert figures["li_accuracy"] == pytest.approx(1 / 3) and figures["li_mean_words"] == pytest.approx(7 / 3)


def test_lift_reads_a_user_s_preference_file_when_the_pipeline_starts_with_it(tmp_path, monkeypatch):
    from selfimprove.pipeline.compiler import compile_loop
    from selfimprove.core.errors import UserError
    from selfimprove.loop.loopfile import load_loop

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(tmp_path)  # the project: paths in settings are relative to it
    loop = tmp_path / "loop.yaml"
    loop.write_text((root / "loops/lift.yaml").read_text())
    with pytest.raises(UserError, match="no stage before lift makes pairs"):
        load_loop(str(loop), ["pipeline=[lift, train, evaluate]"])
    (tmp_path / "prefs.jsonl").write_text('{"prompt": "Q", "chosen": "a", "rejected": "b"}\n')
    document, _ = compile_loop(load_loop(str(loop), ["pipeline=[lift, train, evaluate]",
                                                     "lift.pairs_file=prefs.jsonl"]), tmp_path)
    node = document["stages"]["lift-it1-lift"]
    assert node["deps"] == ["prefs.jsonl"] and "--pairs" not in node["cmd"]
    document, _ = compile_loop(load_loop(str(root / "loops/lift.yaml")), tmp_path)
    node = document["stages"]["lift-it1-lift"]
    assert node["deps"] == ["runs/lift/it1/pairs.jsonl"] and "--pairs runs/lift/it1/pairs.jsonl" in node["cmd"]
    assert "--pairs runs/lift/it1/pairs_lift.jsonl" in document["stages"]["lift-it1-train"]["cmd"]


def test_a_swapped_pair_keeps_the_figures_of_each_side_with_its_text():
    import random

    from selfimprove.stages import lift as lift_stage

    pair = {"prompt": "Q", "chosen": "one two three four five six", "rejected": "short", "chosen_correct": True,
            "rejected_correct": False, "chosen_score": 9.0, "rejected_score": 2.0, "weight": 0.5}
    settings = {**lift_stage.STAGE.defaults(), "min_gap": 1}
    loose, tight = lift_stage.length_instructed(pair, settings, random.Random(0))
    assert loose["chosen"] == pair["chosen"] and loose["chosen_correct"] is True
    assert tight["lift_swapped"] and tight["chosen"] == "short"
    assert (tight["chosen_correct"], tight["rejected_correct"]) == (False, True)
    assert (tight["chosen_score"], tight["rejected_score"]) == (2.0, 9.0) and tight["weight"] == 0.5
