"""The min_margin pair rule: best vs worst, kept only when the scores are at least min_margin apart."""

import pytest

from selfimprove.core.errors import UserError
from selfimprove.loop.loopfile import load_loop
from selfimprove.pipeline import compiler
from selfimprove.stages.pairs import build_pairs


def _record(id: str, scores: list, unsplittable=None) -> dict:
    texts = [f"answer {i} of {id}" for i in range(len(scores))]
    return {"id": id, "prompt": f"question {id}", "completions": texts, "responses": texts, "mean_scores": scores,
            "unsplittable": unsplittable or [False] * len(scores), "correct": [None] * len(scores)}


RECORDS = [_record("wide", [5.0, 1.0, 3.0]), _record("narrow", [3.5, 3.0, 3.25]), _record("tie", [2.0, 2.0]),
           _record("unsplit", [4.0, 4.0], unsplittable=[False, True])]


def test_pairs_closer_than_the_margin_are_dropped_and_counted():
    pairs, stats = build_pairs(RECORDS, {"rule": "min_margin", "min_margin": 1.0, "rho": 0.0, "seed": 0})
    assert [(p["id"], p["chosen_score"], p["rejected_score"]) for p in pairs] == [("wide", 5.0, 1.0), ("unsplit", 4.0, 4.0)]
    assert stats["pairs"] == 2 and stats["dropped_small_margin"] == 1 and stats["dropped_ties"] == 1
    assert stats["mean_chosen_length"] == pytest.approx(len("answer 0 of wide") / 2 + len("answer 0 of unsplit") / 2)


def test_margin_zero_is_best_vs_worst():
    loose, _ = build_pairs(RECORDS, {"rule": "min_margin", "min_margin": 0.0, "rho": 0.0, "seed": 0})
    plain, _ = build_pairs(RECORDS, {"rule": "best_vs_worst", "rho": 0.0, "seed": 0})
    assert loose == plain and len(plain) == 3


def _loop(tmp_path, pairs: str):
    path = tmp_path / "loop.yaml"
    path.write_text("name: m\nmodel: builtin:tiny-arith-judge\ndata: {prompts: builtin:arith/train, eval: builtin:arith/test}\n"
                    f"iterations: 1\npipeline: [generate, judge, pairs, train, evaluate]\nstages:\n  pairs: {pairs}\n")
    return path


def test_a_loop_sets_the_margin_and_the_rule_counts_in_the_pairs_fingerprint(tmp_path):
    loop = load_loop(_loop(tmp_path, "{rule: min_margin, min_margin: 2.0}"))
    document, params = compiler.compile_loop(loop, tmp_path)
    assert params["m"]["it1"]["pairs"]["min_margin"] == 2.0
    assert "code.scoring-rules-margin" in document["stages"]["m-it1-pairs"]["params"]
    with pytest.raises(UserError, match="min_margin"):
        load_loop(_loop(tmp_path, "{rule: min_margin, min_margin: -1}"))


def test_at_its_default_the_setting_stays_out_of_params(tmp_path):
    _, params = compiler.compile_loop(load_loop(_loop(tmp_path, "{rule: best_vs_worst}")), tmp_path)
    assert "min_margin" not in params["m"]["it1"]["pairs"]
