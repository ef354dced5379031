"""The probability-weighted judge (mode expected) and the pairwise win rate against iteration 0.

A scripted backend returns queued next-token probabilities (the boundary a real model sits behind);
one test reads real probabilities from an untrained tiny model to check the tokenisation seam."""

import pytest

from selfimprove.scoring import judging
from selfimprove.backends.hf import HFBackend, continuation_tokens
from selfimprove.core.errors import UserError
from selfimprove.core.registry import stage_defaults
from selfimprove.scoring.judge_metrics import win_rate
from selfimprove.stages.evaluate import length_stats
from selfimprove.stages.judge import judge

from fakes import ScriptedModel

JUDGE = stage_defaults("judge")
EVALUATE = stage_defaults("evaluate")


def samples(completions, gold="85"):
    return [{"id": 0, "prompt": "Q", "question": "q0", "gold": gold, "sample": j, "extra": False, "completion": c}
            for j, c in enumerate(completions)]


def test_expected_score_is_the_renormalised_mean_and_a_low_mass_is_a_failure():
    # scores 0..5 with mass 0.2 on 1 and 0.6 on 5, 0.2 elsewhere in the vocabulary: (0.2*1 + 0.6*5) / 0.8
    assert judging.expected_score([0, 0.2, 0, 0, 0, 0.6], 0.1) == pytest.approx(4.0)
    assert judging.expected_score([0, 0.02, 0, 0, 0, 0.03], 0.1) is None
    assert judging.expected_score([0] * 6, 0.0) is None


def test_judge_in_expected_mode_scores_by_probabilities_and_reports_the_mass(tmp_path):
    settings = dict(JUDGE, mode="expected", template="tiny-arith", response_marker="####", max_failure_rate=0.5)
    backend = ScriptedModel().enqueue_probs([[0, 0.1, 0, 0, 0, 0.9],  # right answer: judged 4.6
                                            [0, 0.8, 0, 0, 0, 0.2],  # wrong answer: judged 1.8
                                            [0, 0.01, 0, 0, 0, 0.01]])  # mass 0.02 < 0.1: a failure, not a score
    records, figures = judge(settings, samples([" #### 85", " #### 84", " #### 85"]), "unused-model",
                             tmp_path / "judgements.jsonl", backend=backend)
    assert backend.prompts[0] == "q085 judge:Score: " and backend.choices == ["0", "1", "2", "3", "4", "5"]
    assert records[0]["mean_scores"] == [pytest.approx(4.6), pytest.approx(1.8), None]
    assert figures["judge_parse_failures"] == 1 and figures["judge_score_5"] == 1 and figures["judge_score_2"] == 1
    assert figures["judge_score_mass"] == pytest.approx((1.0 + 1.0 + 0.02) / 3)
    assert figures["judge_sample_agreement"] == 1.0  # 4.6 says right, 1.8 says wrong: both true


def test_expected_judge_with_too_little_mass_fails_the_stage_in_one_line(tmp_path):
    settings = dict(JUDGE, mode="expected", template="tiny-arith", max_failure_rate=0.5)
    backend = ScriptedModel().enqueue_probs([[0.01] * 6, [0.01] * 6])
    with pytest.raises(UserError, match="min_score_mass") as caught:
        judge(settings, samples([" 85", " 84"]), "unused-model", tmp_path / "j.jsonl", backend=backend)
    assert "\n" not in str(caught.value)


def test_win_rate_averages_both_orders_so_a_pure_position_bias_is_a_draw():
    records = [{"question": f"q{i}"} for i in range(2)]
    settings = dict(EVALUATE, win_rate_size=2)
    judge_settings = dict(JUDGE, mode="expected")
    # The judge always prefers the first position 3:1, whoever is there: every order says A.
    biased = ScriptedModel().enqueue_probs([[0.6, 0.2]] * 4)
    figures = win_rate(settings, judge_settings, records, ["ours0", "ours1"], ["base0", "base1"], biased)
    assert figures["win_rate_vs_base"] == pytest.approx(0.5)
    assert figures["win_position_consistency"] == 0.0  # each prompt's two orders disagree
    assert figures["win_first_position_rate"] == pytest.approx(0.75)
    assert "ours0" in biased.prompts[0].split("Assistant B")[0] and "base0" in biased.prompts[1].split("Assistant B")[0]
    assert biased.prompts[0].endswith("Winner: ")
    # A judge that prefers our output in both orders: p(ours) = 0.8 then 0.9 on prompt 0; 0.5 / 0.5 on prompt 1.
    fair = ScriptedModel().enqueue_probs([[0.8, 0.2], [0.1, 0.9], [0.3, 0.3], [0.2, 0.2]])
    figures = win_rate(settings, judge_settings, records, ["ours0", "ours1"], ["base0", "base1"], fair)
    assert figures["win_rate_vs_base"] == pytest.approx((0.8 + 0.9 + 0.5 + 0.5) / 4)
    assert figures["win_position_consistency"] == 1.0  # prompt 1 is a tie both ways and does not count


def test_win_rate_from_written_verdicts_counts_ties_half_and_unparsed_apart():
    records = [{"question": f"q{i}"} for i in range(3)]
    verdicts = iter(["... Winner: A", "Winner: A",  # prompt 0: ours wins, then base wins (position bias)
                     "Winner: B", "Winner: A",  # prompt 1: base wins in both orders
                     "Winner: tie", "no verdict"])  # prompt 2: one order unparseable, left out
    figures = win_rate(dict(EVALUATE, win_rate_size=3), dict(JUDGE), records, ["a", "b", "c"], ["x", "y", "z"],
                       generate_verdicts=lambda prompts: [next(verdicts) for _ in prompts])
    assert figures["win_prompts"] == 2 and figures["win_unparsed"] == 1
    assert figures["win_rate_vs_base"] == pytest.approx((1 + 0 + 0 + 0) / 4)
    assert figures["win_position_consistency"] == pytest.approx(0.5)


def test_length_stats():
    assert length_stats(["a", "abc", "ab", "abcdefghij"]) == {"mean_length": 4.0, "median_length": 3.0,
                                                             "p90_length": 10.0}


def test_choice_probabilities_from_a_real_model_follow_the_tokenisation_seam(tmp_path):
    from transformers import AutoTokenizer

    from selfimprove.tasks import tinyarith
    from selfimprove.stages.untrained import save_untrained

    tokenizer = AutoTokenizer.from_pretrained(save_untrained(tmp_path / "m", layers=1, chars=tinyarith.JUDGE_CHARS))
    context, token = continuation_tokens(tokenizer, "12+3=15 judge:Score: ", ["5"])[0]
    assert tokenizer.decode([token]) == "5" and tokenizer.decode(list(context)).endswith("Score: ")
    backend = HFBackend(str(tmp_path / "m"))
    digits = [str(d) for d in range(10)]
    probs = backend.choice_probs(["1+1=2 judge:Score: ", "9+9="], digits, batch_size=1)
    assert len(probs) == 2 and all(len(p) == 10 for p in probs)
    assert all(0 < sum(p) <= 1 + 1e-6 for p in probs)
    # Batched with left padding, the same prompts give the same probabilities.
    batched = backend.choice_probs(["1+1=2 judge:Score: ", "9+9="], digits, batch_size=2)
    assert [p for row in batched for p in row] == pytest.approx([p for row in probs for p in row], abs=1e-5)


def test_generate_then_expected_reads_a_score_after_each_written_judgement(tmp_path):
    settings = dict(JUDGE, mode="generate_then_expected", n=2, template="tiny-arith", max_failure_rate=0.5,
                    prompt_template="<user>{question}</user>")
    backend = ScriptedModel().enqueue(["looks right", "hmm", "wrong digits", "fine"])
    backend.enqueue_probs([[0, 0, 0, 0, 0, 1.0], [0, 0.5, 0, 0, 0, 0.5],
                           [0, 1.0, 0, 0, 0, 0], [0, 0, 0, 0.5, 0, 0]])
    records, figures = judge(settings, samples([" 85", " 84"]), "unused-model", tmp_path / "j.jsonl", backend=backend)
    # The read-out prompt is the wrapped judge prompt, the judgement as written, a newline, the prefill.
    assert backend.scored[0] == "<user>q085 judge:</user>looks right\nScore: "
    assert records[0]["judgements"] == [["looks right", "hmm"], ["wrong digits", "fine"]]
    assert records[0]["scores"] == [[5.0, 3.0], [1.0, 3.0]]
    assert records[0]["mean_scores"] == [4.0, 2.0]
    assert figures["judge_score_mass"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)


def test_metajudge_in_expected_mode_takes_the_likelier_letter(tmp_path):
    from selfimprove.stages.metajudge import metajudge

    record = {"id": 0, "prompt": "P", "question": "q", "gold": None, "responses": ["r"], "unsplittable": [False],
              "judgements": [["says five", "says one"]], "scores": [[5.0, 1.0]], "mean_scores": [3.0],
              "correct": [None], "completions": ["r"]}
    settings = stage_defaults("metajudge") | {"mode": "expected"}
    backend = ScriptedModel().enqueue_probs([[0.7, 0.2], [0.3, 0.6]])  # prefers "says five" in both orders
    pairs, stats = metajudge(settings, dict(JUDGE, template="additive"), [record], "m", tmp_path / "jp.jsonl",
                             backend=backend)
    assert all(p.endswith("Winner: ") for p in backend.prompts)
    assert stats["meta_battles"] == 2 and stats["meta_higher_score_win_rate"] == 1.0
    [pair] = pairs
    assert pair["chosen"] == "says five" and pair["rejected"] == "says one"


def test_loop_file_checks_of_judge_modes(tmp_path):
    from selfimprove.loop.loopfile import load_loop

    loop = tmp_path / "loop.yaml"
    loop.write_text("name: t\nmodel: builtin:tiny-arith-judge\n"
                    "data: {prompts: builtin:arith/train, eval: builtin:arith/test}\niterations: 1\n"
                    "stages:\n  judge: {mode: expected, prompt_template: 'no placeholder'}\n"
                    "  pairs: {rule: length_band, judge_pairs: true}\n")
    with pytest.raises(UserError) as caught:
        load_loop(loop)
    text = "\n".join(caught.value.lines)
    assert f"{loop}:6: stages.judge.mode: expected writes no judgements for the meta-judge" in text
    assert f"{loop}:6: stages.judge.prompt_template: 'no placeholder' must contain {{question}}" in text


def test_win_rate_compiles_to_outputs_and_a_fixed_judge(tmp_path):
    from pathlib import Path

    from selfimprove.pipeline import compiler
    from selfimprove.loop.loopfile import load_loop

    root = Path(__file__).resolve().parent.parent
    document, _ = compiler.compile_loop(load_loop(root / "examples/smollm2/self_rewarding.yaml"), root)
    it0, it2 = document["stages"]["sr_smollm2-it0-evaluate"], document["stages"]["sr_smollm2-it2-evaluate"]
    assert it0["outs"] == ["runs/sr_smollm2/it0/outputs.jsonl"] and "--base-outputs" not in it0["cmd"]
    assert "--base-outputs runs/sr_smollm2/it0/outputs.jsonl --win-judge runs/builtin/smollm2-135m" in it2["cmd"]
    assert {"runs/sr_smollm2/it0/outputs.jsonl", "runs/builtin/smollm2-135m", "runs/sr_smollm2/it2/model"} <= set(it2["deps"])
