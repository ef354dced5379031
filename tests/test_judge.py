"""The judge stage and the judge pair rules, with a scripted judge: its judgements are queued in order."""

import random

import pytest

from selfimprove.scoring import judging
from selfimprove.tasks import tinyarith
from selfimprove.core.registry import stage_defaults
from selfimprove.core.errors import UserError
from selfimprove.core import templates
from selfimprove.scoring import judge_metrics
from selfimprove.scoring.judge_metrics import thinking
from selfimprove.stages.judge import judge
from selfimprove.scoring.rules.scored import judged_pair
from selfimprove.stages.pairs import build_pairs

from fakes import ScriptedModel

JUDGE = stage_defaults("judge")
PAIRS = stage_defaults("pairs")


def samples(prompt_id, completions, gold="85"):
    return [{"id": prompt_id, "prompt": f"Q{prompt_id}", "question": f"q{prompt_id}", "gold": gold, "sample": j,
             "extra": False, "completion": c} for j, c in enumerate(completions)]


def test_parse_score_takes_the_last_score_and_refuses_out_of_range():
    pattern = JUDGE["score_pattern"]
    assert judging.parse_score("looks fine. Score: 2 ... on reflection Score: 4", pattern, 5) == 4
    assert judging.parse_score("Score:3", pattern, 5) == 3
    assert judging.parse_score("Score: 7", pattern, 5) is None
    assert judging.parse_score("I would give it four points", pattern, 5) is None


def test_split_response_at_the_last_marker():
    assert judging.split_response(" 7+8=15 r5; #### 15", "####") == ("7+8=15 r5;", "15")
    assert judging.split_response("no marker here", "####") is None
    assert judging.split_response("  whole thing ", "") == ("", "whole thing")


def test_judge_averages_keeps_every_judgement_and_reports_health(tmp_path):
    rows = samples(0, [" #### 85", " #### 84", "no answer"]) + samples(1, [" #### 85", " #### 85"])
    settings = dict(JUDGE, n=2, response_marker="####", template="tiny-arith")
    scripted = ScriptedModel().enqueue(["Score: 5", "Score: 4",  # prompt 0, response 0
                                        "Score: 1", "garbled",  # prompt 0, response 1: one parse failure
                                        "Score: 2", "Score: 2",  # prompt 1, response 0
                                        "Score: 2", "Score: 2"])  # prompt 1, response 1: a tie with response 0
    records, figures = judge(settings, rows, "unused-model", tmp_path / "judgements.jsonl", backend=scripted)
    assert scripted.prompts[0] == "q085 judge:"  # the tiny template: question, then the final answer only
    assert records[0]["mean_scores"] == [4.5, 1.0, None] and records[0]["unsplittable"] == [False, False, True]
    assert records[0]["judgements"][1] == ["Score: 1", "garbled"] and records[0]["scores"][1] == [1, None]
    assert records[0]["correct"] == [True, False, False]
    assert figures["judge_judgements"] == 8 and figures["judge_parse_failures"] == 1
    assert figures["judge_parse_failure_rate"] == 1 / 8
    assert figures["judge_tie_rate"] == 1 / 2
    assert (figures["judge_score_5"], figures["judge_score_4"], figures["judge_score_2"], figures["judge_score_1"]) == (1, 1, 4, 1)
    assert figures["judge_unsplittable"] == 1
    # Verdicts vs the truth: 5 and 4 on a right answer agree, 1 on a wrong one agrees, 2s (not above the
    # middle of 0..5) on right answers disagree.
    assert figures["judge_sample_agreement"] == 3 / 7
    assert (tmp_path / "judgements.jsonl").exists()


def test_judge_resumes_from_complete_shards(tmp_path):
    rows = [row for i in range(4) for row in samples(i, [" #### 85", " #### 80"])]
    settings = dict(JUDGE, n=1, response_marker="####", template="tiny-arith", shard_size=4)  # 2 shards of 4 responses
    out = tmp_path / "judgements.jsonl"
    first = ScriptedModel().enqueue(["Score: 5", "Score: 1"] * 4)
    expected, _ = judge(settings, rows, "m", out, backend=first)
    # A crash after the first shard: only that shard's file is left in the scratch folder.
    calls = []

    def crashing(prompts, index, on_done):
        calls.append(index)
        if index == 1:
            raise KeyboardInterrupt
        return first.sample(prompts, 1, 0.0, 1.0, 8, 8, index, on_batch=on_done)

    first.enqueue(["Score: 5", "Score: 1"] * 4)
    with pytest.raises(KeyboardInterrupt):
        judge(settings, rows, "m", out, backend=first, generate_judgements=crashing)
    resumed = ScriptedModel().enqueue(["Score: 5", "Score: 1"] * 2)
    records, _ = judge(settings, rows, "m", out, backend=resumed)
    assert calls == [0, 1] and len(resumed.prompts) == 4  # shard 0 was reused, shard 1 judged again
    assert records == expected


def test_too_many_parse_failures_fail_with_what_the_judge_wrote(tmp_path):
    rows = samples(0, [" #### 85", " #### 84"])
    settings = dict(JUDGE, n=1, max_failure_rate=0.4, template="tiny-arith", response_marker="####")
    scripted = ScriptedModel().enqueue(["The answer seems fine to me", "Score: 1"])
    with pytest.raises(UserError, match=r"50% of 2 judgements .*limit 40%.*'The answer seems fine to me'"):
        judge(settings, rows, "m", tmp_path / "j.jsonl", backend=scripted)


def record(means, responses=None, unsplittable=None, correct=None):
    n = len(means)
    responses = responses or [f"r{i}" for i in range(n)]
    return {"id": 0, "prompt": "p", "completions": [f"thought {i} #### {r}" for i, r in enumerate(responses)],
            "responses": responses, "mean_scores": means, "unsplittable": unsplittable or [False] * n,
            "correct": correct or [None] * n}


def test_best_vs_worst_drops_ties_and_ignores_unparsed_responses():
    pair = judged_pair(record([3.0, None, 4.5, 1.0], correct=[False, True, True, False]), "best_vs_worst", 0.0,
                       random.Random(0))
    assert pair["chosen"].startswith("thought 2") and pair["rejected"].startswith("thought 3")
    assert (pair["chosen_score"], pair["rejected_score"]) == (4.5, 1.0)
    assert pair["chosen_correct"] is True and pair["rejected_correct"] is False
    assert judged_pair(record([3.0, 3.0, None]), "best_vs_worst", 0.0, random.Random(0)) is None
    pairs, stats = build_pairs([record([3.0, 3.0]), record([5.0, 1.0])], dict(PAIRS, rule="best_vs_worst"))
    assert stats["pairs"] == 1 and stats["dropped_ties"] == 1


def test_an_output_the_judge_could_not_see_is_rejected():
    pair = judged_pair(record([3.0, 3.0, None], responses=["a", "b", None], unsplittable=[False, False, True]),
                       "best_vs_worst", 0.0, random.Random(0))
    assert pair["rejected"].startswith("thought 2") and pair["rejected_unsplittable"]


def test_length_controlled_score_prefers_the_shorter_of_close_scores():
    # scores 5, 4.5, 1 with lengths 40, 4, 20: z(score) = [0.85, 0.55, -1.40], z(len) = [1.29, -1.15, -0.14].
    r = record([5.0, 4.5, 1.0], responses=["x" * 40, "x" * 4, "x" * 20])
    assert judged_pair(r, "length_controlled", 0.0, random.Random(0))["chosen"].startswith("thought 0")
    with_control = judged_pair(r, "length_controlled", 0.5, random.Random(0))
    # s = [0.85 - 0.65, 0.55 + 0.58, -1.40 + 0.07] = [0.21, 1.13, -1.33]
    assert with_control["chosen"].startswith("thought 1") and with_control["rejected"].startswith("thought 2")


def test_length_band_takes_the_shortest_top_and_longest_bottom():
    # best 5, worst 1; rho 0.25: top tier >= 4, bottom tier <= 2.
    r = record([5.0, 4.0, 3.0, 2.0, 1.0], responses=["x" * 50, "x" * 10, "x", "x" * 60, "x" * 5])
    pair = judged_pair(r, "length_band", 0.25, random.Random(0))
    assert pair["chosen"].startswith("thought 1") and pair["rejected"].startswith("thought 3")
    plain = judged_pair(r, "length_band", 0.0, random.Random(0))
    assert plain["chosen"].startswith("thought 0") and plain["rejected"].startswith("thought 4")


def test_thinking_counts_outputs_that_reason_before_answering():
    figures = thinking([" 7+8=15 r5; #### 15", " #### 15", "garbage"], "####")
    assert figures["thought_rate"] == 1 / 3 and figures["unsplittable_rate"] == 1 / 3
    assert figures["mean_thought_length"] == len("7+8=15 r5;") / 2


def test_held_out_candidates_are_half_right_and_the_same_every_time():
    records = [{"question": p["question"], "answer": p["answer"]} for p in tinyarith.problems(0, 400, 3, "validation")]
    candidates = judge_metrics.held_out_candidates(records, 1234)
    assert candidates == judge_metrics.held_out_candidates(records, 1234)
    share = sum(c["correct"] for c in candidates) / len(candidates)
    assert 0.42 < share < 0.58
    wrong = [c for c, r in zip(candidates, records) if not c["correct"]]
    assert all(c["response"] != r["answer"] for c, r in zip(candidates, records) if not c["correct"]) and wrong


def test_tiny_judge_examples_compare_digit_by_digit():
    assert tinyarith.comparison("148", 159) == "148 vs 159: 1=1, 4/5, 8/9"
    assert tinyarith.judgement(47, 38, "84") == " 7+8=15 r5; 4+3+1=8 r85; 84 vs 85: 8=8, 4/5. Score: 1"
    assert tinyarith.judgement(47, 38, "85").endswith("85 vs 85: 8=8, 5=5. Score: 5")
    # The meta-judge names the judgement whose score matches its own check.
    assert tinyarith.meta_judgement(47, 38, "84", 5, 1).endswith("4/5. Winner: B")
    assert tinyarith.meta_judgement(47, 38, "85", 5, 1).endswith("5=5. Winner: A")


def test_user_template_must_use_the_placeholders(tmp_path):
    bad = tmp_path / "judge.txt"
    bad.write_text("Rate {answer} from 1 to 5")
    with pytest.raises(UserError, match=r"needs the placeholders \{question\}, \{response\}"):
        templates.load(str(bad), ("question", "response"))
    good = tmp_path / "good.txt"
    good.write_text("Q: {question}\nA: {response}\nJSON like {{\"score\": 1}}")
    assert templates.load(str(good), ("question", "response")).format(question="q", response="r").startswith("Q: q")


def test_position_weights_discount_wins_in_the_favoured_position():
    battles = [{"winner": "A"}] * 3 + [{"winner": "B"}] + [{"winner": None}]
    assert judging.position_weights(battles) == (1 / 4, 3 / 4)  # first place wins 3 of 4: worth 1/4 each


def test_elo_orders_judgements_by_weighted_wins():
    # 0 beats 1 and 2, 1 beats 2: strengths must come out 0 > 1 > 2, and stay finite.
    scores = [[0, 1, 1], [0, 0, 1], [0, 0, 0]]
    strengths = judging.elo(scores)
    assert strengths[0] > strengths[1] > strengths[2] and max(map(abs, strengths)) < 20
    assert judging.elo([[0, 0], [0, 0]]) == [0.0, 0.0]
    battles = [{"first": 0, "second": 1, "winner": "A"}, {"first": 1, "second": 0, "winner": "B"},
               {"first": 1, "second": 0, "winner": None}]
    assert judging.battle_scores(battles, 2, (0.25, 0.75)) == [[0.0, 0.25 + 0.75], [0.0, 0.0]]  # B[0][1]


def test_parse_winner_reads_the_last_verdict_and_refuses_ties():
    pattern = stage_defaults("metajudge")["winner_pattern"]
    assert judging.parse_verdict("A seems fine... Winner: B", pattern) == "B"
    assert judging.parse_verdict("Winner: tie", pattern) is None and judging.parse_verdict("", pattern) is None


def judged_record(scores, correct=True):
    texts = [[f"check {i}.{j}. Score: {s}" for j, s in enumerate(per)] for i, per in enumerate(scores)]
    return {"id": 0, "question": "47+38=", "responses": [f"8{i}" for i in range(len(scores))], "judgements": texts,
            "scores": scores, "correct": [correct] * len(scores)}


def test_metajudge_compares_the_most_uncertain_responses_judgements_in_both_orders(tmp_path):
    from selfimprove.stages.metajudge import metajudge, most_uncertain

    record = judged_record([[5, 5, 5], [5, 1, 1], [1, None, 5]])
    assert most_uncertain(record) == 2  # scores 1 and 5: variance 4 (the failed judgement is ignored)
    settings = stage_defaults("metajudge")
    settings["template"] = "tiny-arith-meta"
    # The scripted meta-judge always prefers the judgement that says 5: "Winner: A" when A says 5.
    seen = []

    def verdicts(prompts, index, on_done):
        seen.extend(prompts)
        return ["ok. Winner: A" if " A:5 " in p else "ok. Winner: B" for p in prompts]

    pairs, stats = metajudge(settings, JUDGE | {"template": "tiny-arith"}, [record], "m", tmp_path / "jp.jsonl",
                             generate_verdicts=verdicts)
    assert seen == ["47+38=82 A:1 B:5 meta:", "47+38=82 A:5 B:1 meta:"]  # both orders of judgements 0 and 2
    assert stats["meta_battles"] == 2 and stats["meta_first_position_win_rate"] == 0.5
    assert stats["meta_higher_score_win_rate"] == 1.0
    [pair] = pairs
    assert pair["prompt"] == "47+38=82 judge:" and pair["chosen"] == "check 2.2. Score: 5"
    assert pair["rejected"] == "check 2.0. Score: 1"
    assert pair["chosen_verdict_right"] is True and stats["judge_pairs_chosen_right"] == 1.0


def test_unanimous_judgements_give_no_judge_pair(tmp_path):
    from selfimprove.stages.metajudge import metajudge

    settings = stage_defaults("metajudge") | {"template": "tiny-arith-meta"}
    pairs, stats = metajudge(settings, JUDGE | {"template": "tiny-arith"}, [judged_record([[5, 5], [1, 1]])], "m",
                             tmp_path / "jp.jsonl", generate_verdicts=lambda prompts, i, done: [])
    assert pairs == [] and stats["meta_battles"] == 0
