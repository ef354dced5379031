"""Reward-hacking and drift alarms (selfimprove.scoring.alarms): computed by the pairs stage into its
metrics file, declared (so `metrics`, `diff`, the report and `stop:` know them), and right on cases
worked by hand."""

import json
import math

import pytest

from selfimprove.core.errors import UserError
from selfimprove.loop.loopfile import load_loop
from selfimprove.scoring.alarms import alarm_figures, score_length_correlation
from selfimprove.stages import pairs as pairs_stage


def vote_record(id, completions, answers):
    votes = {}
    for answer in answers:
        votes[answer] = votes.get(answer, 0) + 1
    top = max(votes, key=votes.get)
    return {"id": id, "prompt": f"q{id}", "completions": completions, "answers": answers, "votes": votes,
            "majority": top, "majority_votes": votes[top], "n": len(answers), "extra": [False] * len(answers)}


def test_figures_worked_by_hand():
    records = [vote_record(0, ["aaaa", "aaaa", "b"], ["1", "1", "2"]),  # the long answer wins the vote
               vote_record(1, ["cc", "dddddd"], ["3", "4"])]  # a tie: no score difference
    pairs = [{"id": 0, "prompt": "q0", "chosen": "aaaa", "rejected": "b"},
             {"id": 1, "prompt": "q1", "chosen": "cc", "rejected": "dddddd"},
             {"id": 2, "prompt": "q2", "completion": "sft example"}]  # not a preference pair: no gap
    figures = alarm_figures(records, pairs)
    assert figures["alarm_length_gap"] == pytest.approx(((4 - 1) + (2 - 6)) / 2)
    assert figures["alarm_chosen_longer"] == 0.5
    assert figures["alarm_sample_length"] == pytest.approx((4 + 4 + 1 + 2 + 6) / 5)
    assert figures["alarm_repeat_rate"] == pytest.approx(2 / 5)  # the two "aaaa" samples
    # prompt 0: scores 2/3, 2/3, 1/3 against lengths 4, 4, 1 (centred: +1/9,+1/9,-2/9 and +1,+1,-2);
    # prompt 1: equal scores, nothing to correlate; pooled r = 1
    assert figures["alarm_score_length_corr"] == pytest.approx(1.0)


def test_judge_scores_and_responses_after_a_thought_marker_are_what_counts():
    record = {"id": 0, "prompt": "q", "completions": ["long thought #### a", "t #### bbbbbbb"],
              "responses": ["a", "bbbbbbb"], "mean_scores": [5.0, 1.0]}
    figures = alarm_figures([record], [])
    assert figures["alarm_sample_length"] == 4.0  # the responses a judge read, not the thoughts
    assert figures["alarm_score_length_corr"] == pytest.approx(-1.0)  # the shorter response scored higher
    assert "alarm_length_gap" not in figures


def test_no_spread_leaves_the_correlation_out():
    assert score_length_correlation([{"completions": ["a", "b"], "mean_scores": [1.0, 2.0]}]) is None
    assert "alarm_score_length_corr" not in alarm_figures([{"completions": ["a"], "mean_scores": [1.0]}], [])


def test_the_pairs_stage_writes_them_into_its_metrics_file(tmp_path):
    records = [vote_record(i, [" #### 5", " 2+3=5 #### 5", " #### 6", " #### 5"], ["5", "5", "6", "5"])
               for i in range(4)]
    (tmp_path / "votes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "params.yaml").write_text(json.dumps({"t": {"it1": {"pairs": pairs_stage.STAGE.defaults()}}}))
    pairs_stage.main(["--params", str(tmp_path / "params.yaml"), "--run", "t", "--iteration", "1",
                      "--scored", str(tmp_path / "votes.jsonl"), "--out", str(tmp_path / "pairs.jsonl"),
                      "--stats", str(tmp_path / "pairs.json")])
    stats = json.loads((tmp_path / "pairs.json").read_text())
    assert stats["pairs"] == 4 and stats["alarm_repeat_rate"] == pytest.approx(0.5)
    assert math.isfinite(stats["alarm_length_gap"]) and 0 <= stats["alarm_chosen_longer"] <= 1


def test_the_alarms_are_declared_and_a_stop_rule_can_watch_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop.yaml").write_text("name: t\nmodel: builtin:tiny-arith\n"
                                        "data: {prompts: builtin:arith/train, eval: builtin:arith/test}\niterations: 2\n"
                                        "stop: [{metric: alarm_chosen_longer, above: 0.9}]\n")
    assert load_loop(tmp_path / "loop.yaml").stop[0]["metric"] == "alarm_chosen_longer"
    with pytest.raises(UserError, match="did you mean 'alarm_chosen_longer'"):
        load_loop(tmp_path / "loop.yaml", ["stop=[{metric: alarm_chosen_longr, above: 0.9}]"])
