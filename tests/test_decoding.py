"""The decoding stage (selfimprove.stages.decoding, Adaptive Decoding's comparison): every fixed
temperature, or the temperature head's argmax and sampled temperatures, scored by the loop's reward rule.
The model is the scripted fake (tests/fakes.py); the reward is the built-in `correct` rule."""

import json
import statistics

import pytest
import yaml

from selfimprove.core.registry import stage_defaults
from selfimprove.stages import decoding
from selfimprove.stages.decoding import decode_and_score, method_figures, samples_of, scores_of

from fakes import ScriptedModel

REWARD = stage_defaults("reward")  # source: correct (1.0 for the gold final answer, else 0.0)
SETTINGS = {**stage_defaults("decoding"), "temperatures": "0.0,1.0", "k": 2, "max_new_tokens": 16,
            "batch_size": 4, "seed": 7, "top_p": 0.9}
RECORDS = [{"question": "2+3=", "answer": "5", "kind": "exact"}, {"question": "3+4=", "answer": "7", "kind": "variety"}]
PROMPTS = ["Q: 2+3=", "Q: 3+4="]


def test_every_fixed_temperature_is_scored_and_the_best_one_is_the_stage_s_score():
    model = ScriptedModel().enqueue([" #### 5", " #### 5", " #### 3", " #### 7",  # t=0.0: prompt means 1, 0.5
                                     " #### 4", "no answer", " #### 7", " #### 7"])  # t=1.0: prompt means 0, 1
    figures = decode_and_score(SETTINGS, REWARD, RECORDS, PROMPTS, model)
    assert [(c.method, c.prompts, c.n, c.temperature, c.top_p, c.max_new_tokens, c.batch_size, c.seed)
            for c in model.calls] == [("sample", PROMPTS, 2, 0.0, 0.9, 16, 4, 7),
                                      ("sample", PROMPTS, 2, 1.0, 0.9, 16, 4, 7)]
    assert figures["score_t0.0"] == 0.75 and figures["score_t1.0"] == 0.5
    assert figures["score_t0.0_sd"] == pytest.approx(statistics.stdev([1.0, 0.5]))  # over prompts, not samples
    assert figures["score_t1.0_sd"] == pytest.approx(2 ** 0.5 / 2)
    # per prompt kind: one prompt each, so a standard deviation of 0
    assert (figures["score_t0.0_exact"], figures["score_t0.0_variety"]) == (1.0, 0.5)
    assert (figures["score_t1.0_exact"], figures["score_t1.0_variety"]) == (0.0, 1.0)
    assert figures["score_t0.0_exact_sd"] == 0.0
    assert figures["decoding_prompts"] == 2 and figures["decoding_prompts_exact"] == 1
    assert figures["decoding_best_fixed_temperature"] == 0.0 and figures["decoding_score"] == 0.75
    assert not any(key.startswith("temperature_") for key in figures)  # no head, no chosen temperatures


def test_a_model_with_a_head_is_decoded_at_its_argmax_and_its_sampled_temperatures():
    model = ScriptedModel(temperature_head=object())
    model.enqueue([" #### 5", " #### 5", " #### 7", " #### 1",  # adaptive: prompt means 1, 0.5
                   " #### 1", " #### 5", " #### 7", " #### 7"])  # adaptive_sampled: 0.5, 1
    model.enqueue_temperatures([[0.2, [0.4, 0.8]], [1.0, 0.0],  # a token-level head: a list per response
                                [0.6, 0.6], [0.6, 0.6]])
    records = [{k: v for k, v in r.items() if k != "kind"} for r in RECORDS]  # no prompt kinds
    figures = decode_and_score(SETTINGS, REWARD, records, PROMPTS, model)
    assert [(c.method, c.pick, c.n, c.seed) for c in model.calls] == [
        ("sample_with_temperatures", "argmax", 2, 7), ("sample_with_temperatures", "sample", 2, 7)]
    assert figures["score_adaptive"] == 0.75 and figures["score_adaptive_sampled"] == 0.75
    assert figures["temperature_adaptive"] == pytest.approx((0.4 + 0.5) / 2)  # (0.2 + 0.6) / 2, (1 + 0) / 2
    assert figures["temperature_adaptive_sd"] == pytest.approx(statistics.stdev([0.4, 0.5]))
    assert figures["temperature_adaptive_sampled"] == pytest.approx(0.6)
    assert figures["decoding_score"] == 0.75 and "decoding_best_fixed_temperature" not in figures
    assert not any(key.startswith("score_t") for key in figures)
    assert not any("_exact" in key or "_variety" in key for key in figures)


def test_a_greedy_single_output_counts_as_k_samples():
    class OneGreedyOutput(ScriptedModel):  # a backend that decodes a temperature-0 prompt once
        def sample(self, prompts, n, temperature, *args, **kwargs):
            texts = super().sample(prompts, n, temperature, *args, **kwargs)
            return [t[:1] for t in texts] if temperature == 0.0 else texts

    model = OneGreedyOutput(reply=lambda prompt, j, rng: f"{prompt} #{j}")
    settings = {**SETTINGS, "k": 3}
    assert samples_of(model, ["a"], settings, "0.0") == ([["a #0", "a #0", "a #0"]], None)
    assert samples_of(model, ["a"], settings, "0.5") == ([["a #0", "a #1", "a #2"]], None)


def test_method_figures_count_an_unscored_response_as_zero():
    records = [{"question": "q0", "kind": "exact"}, {"question": "q1", "kind": None}]
    figures = method_figures("t1.0", records, [["a", "b"], ["c", "d"]], None, [[None, 1.0], [1.0, 1.0]])
    assert figures == {"score_t1.0": 0.75, "score_t1.0_sd": pytest.approx(statistics.stdev([0.5, 1.0])),
                       "decoding_prompts": 2, "score_t1.0_exact": 0.5, "score_t1.0_exact_sd": 0.0,
                       "decoding_prompts_exact": 1}


def test_scores_of_applies_the_rule_to_each_response_against_its_gold():
    items = [(0, "2+3=", " #### 5", "5"), (0, "2+3=", " #### 6", "5"), (1, "3+4=", "3+4 is 7", "7"),
             (1, "3+4=", "no idea", "7")]
    assert scores_of(REWARD, items) == [1.0, 0.0, 1.0, 0.0]  # unmarked: the last number is the answer


def test_main_reads_the_eval_prompts_and_writes_the_figures(tmp_path, monkeypatch, capsys):
    model = ScriptedModel().enqueue([" #### 5", " #### 5", " #### 0", " #### 0",  # t=0.5: 0.5
                                     " #### 5", " #### 5", " #### 7", " #### 0"])  # t=1.0: 0.75
    monkeypatch.setattr(decoding, "open_backend", lambda run, ref, revision=None: model)
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n"
                                 for r in RECORDS))
    params = tmp_path / "params.yaml"
    run = {"model": "m", "data": {"eval": str(eval_file), "eval_size": 2, "prompt_template": "Q: {question}",
                                  "question_field": "question", "answer_field": "answer", "seed": 0},
           "it1": {"decoding": {**SETTINGS, "temperatures": "0.5,1.0"}}}
    params.write_text(yaml.safe_dump({"d": run}))
    out = tmp_path / "decoding.json"
    decoding.main(["--params", str(params), "--run", "d", "--iteration", "1", "--model", "m", "--out", str(out)])
    figures = json.loads(out.read_text())
    assert model.batches == [PROMPTS, PROMPTS] and model.closed == 1
    assert figures["score_t0.5"] == 0.5 and figures["score_t1.0"] == 0.75
    assert figures["decoding_best_fixed_temperature"] == 1.0 and figures["decoding_score"] == 0.75
    assert "decoding: t0.5 0.500, t1.0 0.750" in capsys.readouterr().out
