"""The reward stage: built-in rules, a user's function, a real tiny reward model, health and failures."""

import dataclasses
import json

import pytest
import yaml

from selfimprove.scoring import rewards
from selfimprove.core.errors import UserError
from selfimprove.core.stage import Context
from selfimprove.stages.reward import STAGE, check, main, reward

REWARD = STAGE.defaults()


class Problems:
    """What a stage's check sees of the loader's problem collector (its add), here recorded as path: message."""

    def __init__(self):
        self.items = []

    def add(self, path: tuple, message: str) -> None:
        self.items.append(f"{'.'.join(path)}: {message}")


def samples(prompt_id, completions, gold="85", question=None):
    return [{"id": prompt_id, "prompt": f"Q{prompt_id}", "question": question or f"q{prompt_id}", "gold": gold,
             "solution": None, "sample": j, "extra": False, "completion": c} for j, c in enumerate(completions)]


def test_correct_rule_scores_final_answers_and_reports_health():
    rows = samples(0, [" #### 85", " #### 84", "no answer"]) + samples(1, [" #### 12", " 12"], gold="12")
    records, figures = reward(REWARD, rows)
    assert [r["id"] for r in records] == [0, 1]  # one record per prompt, in the judge's format
    assert set(records[0]) == {"id", "prompt", "question", "gold", "completions", "responses", "unsplittable",
                               "judgements", "scores", "mean_scores", "correct"}
    assert records[0]["scores"] == [[1.0], [0.0], [0.0]]
    assert records[0]["mean_scores"] == [1.0, 0.0, 0.0]
    assert records[0]["correct"] == [True, False, False]
    assert records[0]["judgements"] == [["reward 1"], ["reward 0"], ["reward 0"]]
    assert records[1]["mean_scores"] == [1.0, 1.0] and records[1]["unsplittable"] == [False, False]
    assert figures == {"reward_responses": 5, "reward_missing_rate": 0.0, "reward_unsplittable": 0,
                       "reward_tie_rate": 0.5, "reward_mean": 0.6, "reward_min": 0.0, "reward_max": 1.0,
                       "reward_truncated": 0, "reward_sample_agreement": 1.0}


def test_correct_rule_needs_labelled_prompts():
    with pytest.raises(UserError, match="needs labelled prompts"):
        reward(REWARD, samples(0, [" #### 85"], gold=None))


def test_json_keys_wants_an_object_with_every_key():
    completions = ['{"answer": 3, "reason": "adds"}', '{"answer": 3}', "answer: 3", "[1, 2]",
                   '{"reason": 1, "answer": null}']  # right, a key missing, not JSON, not an object, right
    settings = dict(REWARD, source="json_keys", keys="answer, reason")
    records, figures = reward(settings, samples(0, completions, gold=None))
    assert records[0]["mean_scores"] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert records[0]["correct"] == [None] * 5
    assert figures["reward_mean"] == 0.4 and figures["reward_tie_rate"] == 0.0
    assert "reward_sample_agreement" not in figures  # no gold: nothing to agree with


def test_a_users_function_scores_and_may_give_no_score(tmp_path, monkeypatch):
    (tmp_path / "myscoring_len.py").write_text(
        "def score(question, response, gold):\n"
        "    return None if response == 'skip' else len(question + response) / 10\n"
        "def text(question, response, gold):\n"
        "    return 'high'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = dict(REWARD, source="myscoring_len:score")
    records, figures = reward(settings, samples(0, ["abcd", "skip", "ab"], question="q0"))
    assert records[0]["scores"] == [[0.6], [], [0.4]]
    assert records[0]["mean_scores"] == [0.6, None, 0.4]
    assert records[0]["judgements"] == [["reward 0.6"], [], ["reward 0.4"]]  # paired with scores
    assert figures["reward_missing_rate"] == pytest.approx(1 / 3)
    assert figures["reward_min"] == 0.4 and figures["reward_max"] == 0.6
    with pytest.raises(UserError, match="returned 'high'.*return a finite float"):
        reward(dict(REWARD, source="myscoring_len:text"), samples(0, ["a"]))
    with pytest.raises(UserError, match="reward.source myscoring_len:nothing: myscoring_len has no function 'nothing'"):
        reward(dict(REWARD, source="myscoring_len:nothing"), samples(0, ["a"]))
    with pytest.raises(UserError, match="cannot import 'no_such_scoring_module'.*pip install"):
        reward(dict(REWARD, source="no_such_scoring_module:score"), samples(0, ["a"]))
    monkeypatch.chdir(tmp_path)  # the function's file is a dependency of the stage, found without importing
    assert rewards.callable_file("myscoring_len:score").name == "myscoring_len.py"
    assert rewards.callable_file("json:loads") is None and rewards.callable_file("correct") is None


def test_an_unknown_rule_gets_did_you_mean():
    with pytest.raises(UserError, match="unknown reward source 'corect'; did you mean 'correct'"):
        reward(dict(REWARD, source="corect"), samples(0, ["#### 85"]))


def test_response_marker_splits_and_unsplittable_gets_no_score():
    settings = dict(REWARD, response_marker="####")
    records, figures = reward(settings, samples(0, [" 7+8=15 r5; #### 85", "thinking, no marker", " #### 84"]))
    assert records[0]["responses"] == ["85", None, "84"]
    assert records[0]["unsplittable"] == [False, True, False]
    assert records[0]["scores"] == [[1.0], [], [0.0]] and records[0]["judgements"] == [["reward 1"], [], ["reward 0"]]
    assert records[0]["correct"] == [True, False, False]
    assert figures["reward_unsplittable"] == 1 and figures["reward_missing_rate"] == pytest.approx(1 / 3)


def test_too_many_missing_rewards_fail_quoting_one():
    rows = samples(0, [" #### 85", "no marker one", "no marker two"])
    with pytest.raises(UserError, match=r"67% of 3 responses have no reward \(limit 50%.*"
                                        r"'no marker one' has no marker '####'"):
        reward(dict(REWARD, response_marker="####"), rows)
    records, figures = reward(dict(REWARD, response_marker="####", max_missing_rate=0.7), rows)
    assert figures["reward_missing_rate"] == pytest.approx(2 / 3)


def test_check_names_the_setting_and_the_fix():
    problems = Problems()
    for section in [dict(REWARD, source="modle"), dict(REWARD, source="model"), dict(REWARD, source="json_keys"),
                    dict(REWARD, source="pkg.mod:"), dict(REWARD, source="pkg.mod:fn"), REWARD]:
        check({"reward": section}, problems, {})
    assert problems.items == [
        "stages.reward.source: unknown reward source 'modle'; did you mean 'model'? "
        "(or a Python function as module:function)",
        "stages.reward.model: reward.source model needs a reward model; set reward.model to a "
        "directory or a hub id",
        "stages.reward.keys: reward.source json_keys needs the keys to look for; set reward.keys, "
        "e.g. 'answer,reason'",
        "stages.reward.source: 'pkg.mod:' is not module:function (e.g. mypkg.scoring:score)"]
    assert [key for key, s in STAGE.settings.items() if s.check and not s.check(0)] == ["batch_size"]
    assert not STAGE.settings["max_missing_rate"].check(1.5)


def test_node_and_main(tmp_path, monkeypatch):
    monkeypatch.setattr(STAGE, "module", "selfimprove.stages.reward")  # the registry sets it on resolve
    it = "runs/rft/it1"
    nothing = lambda *args: []  # noqa: E731 (no code fingerprints, data keys or file settings here)
    given = dict(run="rft", k=1, out="runs/rft", settings={"reward": REWARD}, inputs={"samples": f"{it}/samples.jsonl"},
                 outputs={"scores": f"{it}/rewards.jsonl", "reward_stats": f"{it}/reward.json"}, tracked=(),
                 backend_keys=[], data_keys=nothing, data_file=nothing, code_keys=nothing, file_deps=nothing)
    # Built by field name, the rest left empty: the node reads only the fields above.
    ctx = Context(**{f.name: given.get(f.name) for f in dataclasses.fields(Context) if f.name in given or
                     f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING})
    assert STAGE.node(ctx) == {
        "cmd": f"python -m selfimprove.stages.reward --params params.yaml --run rft --iteration 1 --samples "
               f"{it}/samples.jsonl --out {it}/rewards.jsonl --stats {it}/reward.json",
        "deps": [f"{it}/samples.jsonl"], "params": ["rft.it1.reward"], "outs": [f"{it}/rewards.jsonl"],
        "metrics": [{f"{it}/reward.json": {"cache": False}}]}
    assert STAGE.included({}) is False and STAGE.writes["scores"] == "rewards.jsonl"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"rft": {"it1": {"reward": REWARD}}}))
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples(0, [" #### 85", " #### 8"])))
    main(["--params", str(tmp_path / "params.yaml"), "--run", "rft", "--iteration", "1",
          "--samples", str(tmp_path / "samples.jsonl"), "--out", str(tmp_path / "rewards.jsonl"),
          "--stats", str(tmp_path / "r.json")])
    written = [json.loads(line) for line in (tmp_path / "rewards.jsonl").read_text().splitlines()]
    assert written[0]["mean_scores"] == [1.0, 0.0]
    assert json.loads((tmp_path / "r.json").read_text())["reward_mean"] == 0.5


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> str:
    """A 2-layer Llama sequence classifier (hidden 32, one label) with random weights and the tiny-arith
    character tokenizer; its config has no pad token id, as many reward checkpoints do."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from selfimprove.stages.bootstrap import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, num_labels=1,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    directory = tmp_path_factory.mktemp("reward") / "model"
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


MODEL_COMPLETIONS = [" #### 85", " 7+8=15 r5; 4+3+1=8 r85; #### 85", " #### 84", "1", " 22+33=55 #### 55"]


def test_a_reward_model_scores_the_same_alone_and_in_batches(reward_model):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = (samples(0, MODEL_COMPLETIONS, question="47+38=")
            + samples(1, [" #### 3", " #### 4"], gold="3", question="1+2="))
    settings = dict(REWARD, source="model", model=reward_model)
    alone, _ = reward(dict(settings, batch_size=1), rows)
    batched, figures = reward(dict(settings, batch_size=4), rows)
    one = [m for r in alone for m in r["mean_scores"]]
    four = [m for r in batched for m in r["mean_scores"]]
    assert four == pytest.approx(one, abs=1e-5)
    assert len({round(m, 4) for m in one}) == len(one)  # different responses, different rewards
    assert figures["reward_missing_rate"] == 0.0 and figures["reward_tie_rate"] == 0.0
    assert figures["reward_min"] == min(four) and figures["reward_max"] == max(four)
    assert 0.0 <= figures["reward_sample_agreement"] <= 1.0 and figures["reward_truncated"] == 0
    assert batched[0]["judgements"][1] == [f"reward {four[1]:.4g}"]
    # What is scored: question + response, the score the first logit at the text's last token.
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model)
    with torch.no_grad():
        direct = model(**tokenizer("47+38=" + MODEL_COMPLETIONS[1].strip(), return_tensors="pt")).logits[0, 0].item()
    assert one[1] == pytest.approx(direct, abs=1e-5)


def test_a_reward_model_without_a_chat_template_says_so(reward_model):
    settings = dict(REWARD, source="model", model=reward_model, chat_template=True)
    with pytest.raises(UserError, match="has no chat template; set reward.chat_template: false"):
        reward(settings, samples(0, [" #### 85"]))
    assert rewards.model_dir(reward_model) is not None and rewards.model_dir("org/reward-model") is None
    assert rewards.model_dir("") is None


def test_a_causal_lm_is_not_a_reward_model(tiny_model):
    with pytest.raises(UserError, match=r"not a reward model, its classification head \(score.weight\)"):
        reward(dict(REWARD, source="model", model=tiny_model), samples(0, [" #### 85"]))
