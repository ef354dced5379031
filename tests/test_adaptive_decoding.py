"""Adaptive Decoding: the temperature head, decoding with it, the latent pair rule, LPO on the head only
(the language model's weights byte-identical), the mixed task's reward, and the loop through the CLI."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import pytest

from selfimprove.models import temperature_head
from selfimprove.core.errors import UserError
from selfimprove.scoring.rules.latent import best_vs_worst_latent
from selfimprove.tasks import mixed

ROOT = Path(__file__).resolve().parent.parent
HEAD = {"temperatures": "0.0,0.5,1.0", "level": "sequence", "width": 8, "layers": 2, "seed": 0}


def file_hashes(directory) -> dict:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def one_hot_head(directory, model, index: int, level: str = "sequence", temperatures=(0.0, 0.5, 1.0)):
    """A head whose softmax puts (almost) all its mass on temperatures[index], whatever the state."""
    import torch

    from selfimprove.stages.head import hidden_size

    config = temperature_head.HeadConfig(tuple(temperatures), level, hidden_size(model, None), 8, 2, model)
    head = temperature_head.build(config)
    with torch.no_grad():
        head[-1].bias[index] = 50.0
    temperature_head.save(head, config, directory)
    return str(directory)


@pytest.mark.parametrize("level", ["sequence", "token"])
def test_a_head_that_always_picks_zero_decodes_exactly_as_greedy_generate(tiny_model, tmp_path, level):
    from selfimprove import models
    from selfimprove.backends.hf import HFBackend
    from selfimprove.backends.sampling import sample

    directory = one_hot_head(tmp_path / "head", tiny_model, 0, level)
    prompts = ["12+34=", "5+6=", "123+456="]  # different lengths: left padding and positions matter
    texts, temps = HFBackend(directory).sample_with_temperatures(prompts, 2, 1.0, 12, 8, seed=0)
    model, tokenizer = models.load(tiny_model)
    greedy = sample(model, tokenizer, prompts, 1, 0.0, 1.0, 12, 8, seed=0)
    assert texts == [g * 2 for g in greedy]
    if level == "sequence":
        assert temps == [[0.0, 0.0]] * 3
    else:
        assert all(t and set(t) == {0.0} for row in temps for t in row)


def test_sampling_with_the_head_is_seeded_and_records_the_set_values(tiny_model, tmp_path):
    from selfimprove.backends.hf import HFBackend

    directory = tmp_path / "head"
    config = temperature_head.HeadConfig((0.0, 0.2, 1.0), "sequence", 128, 8, 2, tiny_model)
    temperature_head.save(temperature_head.build(config), config, directory)  # uniform over the set
    backend = HFBackend(str(directory))
    first = backend.sample_with_temperatures(["12+34="] * 4, 8, 1.0, 6, 16, seed=3)
    assert first == backend.sample_with_temperatures(["12+34="] * 4, 8, 1.0, 6, 16, seed=3)
    used = [t for row in first[1] for t in row]
    assert set(used) == {0.0, 0.2, 1.0}  # 32 uniform draws over 3 values: each appears (p miss < 1e-5)


def test_the_lpo_loss_is_the_papers_separate_loss_computed_by_hand():
    import torch

    config = temperature_head.HeadConfig((0.0, 0.5, 1.0), "sequence", 2, 4, 1, "m")
    head = temperature_head.build(config)
    with torch.no_grad():
        head[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        head[0].bias.zero_()
    states = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    chosen, rejected, beta = torch.tensor([2, 0]), torch.tensor([0, 1]), 0.5
    loss = temperature_head.lpo_loss(head, states, chosen, states, rejected, beta)
    expected = 0.0
    for (x, y), c, r in zip(states.tolist(), chosen.tolist(), rejected.tolist()):
        logits = [x, y, x + y]
        log_z = math.log(sum(math.exp(v) for v in logits))
        margin = (logits[c] - log_z) - (logits[r] - log_z)
        expected += -math.log(1 / (1 + math.exp(-beta * margin)))
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)


def test_the_token_level_loss_sums_log_probabilities_over_each_responses_tokens():
    import torch

    config = temperature_head.HeadConfig((0.0, 1.0), "token", 1, 4, 1, "m")
    head = temperature_head.build(config)
    with torch.no_grad():
        head[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        head[0].bias.zero_()
    # one pair: chosen has two tokens (states 1 and 2, both tau index 0), rejected one (state 3, index 1)
    chosen, rejected = torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0]])
    loss = temperature_head.lpo_loss(head, chosen, torch.tensor([0, 0]), rejected, torch.tensor([1]), 1.0,
                                     torch.tensor([0, 0]), torch.tensor([0]), pairs=1)
    logp = lambda s, i: [s, -s][i] - math.log(math.exp(s) + math.exp(-s))  # noqa: E731
    margin = logp(1.0, 0) + logp(2.0, 0) - logp(3.0, 1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-margin)), rel=1e-6)


def latent_pairs(prompts: list[str], chosen: float, rejected: float) -> list[dict]:
    return [{"id": i, "prompt": p, "chosen": " #### 1", "rejected": " #### 2", "chosen_temperature": chosen,
             "rejected_temperature": rejected} for i, p in enumerate(prompts)]


@pytest.mark.parametrize("level", ["sequence", "token"])
def test_lpo_moves_the_head_towards_chosen_temperatures_and_leaves_the_model_byte_identical(tiny_model, tmp_path, level):
    import torch

    from selfimprove import models
    from selfimprove.stages import head as head_stage
    from selfimprove.stages.lpo import lpo

    before = file_hashes(tiny_model)
    model, _ = models.load(tiny_model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    head_stage.attach({**HEAD, "level": level}, tiny_model, tmp_path / "head")
    prompts = [f"{a}+{b}=" for a, b in [(12, 34), (56, 7), (40, 41), (9, 90)]]
    pairs = latent_pairs(prompts, 1.0, 0.0)
    if level == "token":  # one temperature per token of each response (and its end of sequence)
        pairs = [{**p, "chosen_temperature": [1.0] * 8, "rejected_temperature": [0.0] * 8} for p in pairs]
    figures = lpo({"beta": 1.0, "lr": 0.05, "weight_decay": 0.0, "epochs": 30, "batch_size": 2, "seed": 0},
                  pairs, str(tmp_path / "head"), tmp_path / "out")
    assert figures["lpo_loss_end"] < figures["lpo_loss_start"] and figures["lpo_steps"] == 60
    assert figures["lpo_loss_start"] == pytest.approx(math.log(2), rel=1e-5)  # a new head is uniform: margin 0
    trained, config = temperature_head.load(tmp_path / "out")
    states = temperature_head.prompt_features(model, models.load(tiny_model)[1], prompts)
    probs = torch.softmax(trained(states), dim=-1)
    assert (probs[:, 2] > 0.9).all()  # P(tau = 1.0), which every pair chose
    assert file_hashes(tiny_model) == before
    assert all(torch.equal(weights[k], v) for k, v in models.load(tiny_model)[0].state_dict().items())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [temperature_head.CONFIG, temperature_head.WEIGHTS]


def test_a_head_directory_is_an_ordinary_model_reference(tiny_model, tmp_path):
    from selfimprove import models
    from selfimprove.stages import head as head_stage

    head_stage.attach(HEAD, tiny_model, tmp_path / "head")
    model, tokenizer = models.load(str(tmp_path / "head"))
    assert model.config.hidden_size == 128 and tokenizer("1+1=")["input_ids"]
    assert models.full_weights_dir(str(tmp_path / "head"), tmp_path / "scratch") == tiny_model
    assert models.model_identity(tiny_model) in models.model_identity(str(tmp_path / "head"))


def test_the_head_stage_keeps_a_head_and_refuses_to_change_its_set(tiny_model, tmp_path):
    from selfimprove.stages import head as head_stage

    head_stage.attach(HEAD, tiny_model, tmp_path / "a")
    assert head_stage.attach(HEAD, str(tmp_path / "a"), tmp_path / "b").startswith("kept")
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b")
    with pytest.raises(UserError, match=r"head: .* has a sequence-level head over temperatures 0.0,0.5,1.0"):
        head_stage.attach({**HEAD, "temperatures": "0,1"}, str(tmp_path / "a"), tmp_path / "c")


def test_backends_that_cannot_read_hidden_states_refuse_a_head_in_one_line(tiny_model, tmp_path):
    from selfimprove.backends import open_backend
    from selfimprove.stages import head as head_stage

    head_stage.attach(HEAD, tiny_model, tmp_path / "head")
    with pytest.raises(UserError, match=r"^backend: vllm cannot decode with the temperature head of .*; use backend: hf$"):
        open_backend({"backend": "vllm"}, str(tmp_path / "head"))


def test_the_mixed_task_alternates_kinds_and_its_reward_wants_exact_sums_and_unseen_answers():
    rows = mixed.rows(0, 400, "test", {"digits": 3})
    kinds = [r["kind"] for r in rows]
    assert 160 < kinds.count("exact") < 240
    assert mixed.rows(0, 100, "test", {"digits": 3}) == rows[:100]  # a longer pool extends a shorter one
    assert all((r["answer"] is None) == (r["kind"] == "variety") for r in rows)
    assert not {r["question"] for r in rows} & {r["question"] for r in mixed.rows(0, 400, "train", {"digits": 3})}
    assert mixed.correct_or_distinct("47+38=", [" #### 85", " #### 84"], "85", {}) == [1.0, 0.0]
    # valid and said by no other sample: the repeated 58+79 scores 0, so does the invalid one
    assert mixed.correct_or_distinct("sum 137:", [" 58+79", " 58+79", " 60+77", " 60+78"], None, {}) == [0, 0, 1, 0]


def test_the_reward_stage_gives_a_per_prompt_rule_each_prompts_responses_together():
    from selfimprove.stages.reward import SETTINGS, reward

    settings = {**{k: s.default for k, s in SETTINGS.items()}, "source": "correct_or_distinct"}
    samples = [{"id": 0, "prompt": "sum 137:", "question": "sum 137:", "gold": None, "completion": c,
                "temperature": t} for c, t in [(" 58+79", 0.0), (" 58+79", 0.0), (" 60+77", 1.0)]]
    samples += [{"id": 1, "prompt": "sum 137:", "question": "sum 137:", "gold": None, "completion": " 58+79",
                 "temperature": 0.5}]
    records, _ = reward(settings, samples)
    assert [r["mean_scores"] for r in records] == [[0.0, 0.0, 1.0], [1.0]]  # prompt 1 alone: 58+79 is unseen there
    assert records[0]["temperatures"] == [0.0, 0.0, 1.0]
    pairs, stats = best_vs_worst_latent(records, {}, random.Random(0))
    assert len(pairs) == 1 and pairs[0]["chosen_temperature"] == 1.0 and pairs[0]["rejected_temperature"] == 0.0
    assert stats["dropped_ties"] == 1  # one response: nothing to compare


def test_the_latent_rule_needs_temperatures():
    with pytest.raises(UserError, match="pairs.rule latent needs the temperatures"):
        best_vs_worst_latent([{"id": 0, "mean_scores": [1.0, 0.0]}], {}, random.Random(0))


def test_generate_records_the_heads_temperature_with_each_sample(tiny_model, tmp_path):
    from selfimprove.backends.hf import HFBackend
    from selfimprove.stages import head as head_stage
    from selfimprove.stages.generate import SETTINGS, generate

    head_stage.attach(HEAD, tiny_model, tmp_path / "head")
    settings = {**{k: s.default for k, s in SETTINGS.items()}, "n": 3, "max_new_tokens": 4}
    records = [{"id": i, "question": q, "answer": None} for i, q in enumerate(["1+2=", "3+4="])]
    out = tmp_path / "samples.jsonl"
    generate(settings, records, str(tmp_path / "head"), out, backend=HFBackend(str(tmp_path / "head")))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(r["temperature"] in (0.0, 0.5, 1.0) for r in rows)


def test_the_loop_file_validates_and_chains_the_head_and_its_model():
    from selfimprove.pipeline import compiler
    from selfimprove.loop.loopfile import load_loop

    loop = load_loop(str(ROOT / "loops/adaptive_decoding.yaml"))
    document, _ = compiler.compile_loop(loop, ROOT)
    stages = document["stages"]
    run = loop.name
    assert f"{run}-it0-decoding" in stages and f"{run}-it0-lpo" not in stages
    it2 = stages[f"{run}-it2-head"]
    assert f"runs/{run}/it1/model" in it2["deps"] and "runs/builtin/tiny-mixed" in it2["deps"]
    assert "runs/builtin/tiny-mixed" in stages[f"{run}-it2-decoding"]["deps"]


def test_validate_refuses_a_head_with_the_vllm_backend(tmp_path):
    from selfimprove.loop.loopfile import load_loop

    text = (ROOT / "loops/adaptive_decoding.yaml").read_text()
    (tmp_path / "loop.yaml").write_text(text + "backend: vllm\n")
    with pytest.raises(UserError, match=r"loop.yaml:\d+: backend: the head stage needs backend: hf"):
        load_loop(str(tmp_path / "loop.yaml"))


TINY_LOOP = r"""
name: ad
model: builtin:tiny-mixed
data: {prompts: builtin:mixed/train, eval: builtin:mixed/test, prompts_size: 8, eval_size: 6, digits: 2}
iterations: 1
bootstrap: {steps: 20, batch_size: 8, digits: 2}
pipeline: [head, generate, reward, pairs, lpo, decoding]
stages:
  head:     {temperatures: "0.0,1.0", width: 8}
  generate: {n: 3, max_new_tokens: 12}
  reward:   {source: correct_or_distinct}
  pairs:    {rule: latent}
  lpo:      {epochs: 2}
  decoding: {temperatures: "0.0,1.0", k: 2, max_new_tokens: 12}
"""


def test_the_loop_runs_end_to_end_through_the_cli(tmp_path):
    import subprocess
    import sys

    (tmp_path / "loop.yaml").write_text(TINY_LOOP)
    done = subprocess.run([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    base = json.loads((tmp_path / "runs/ad/it0/decoding.json").read_text())
    assert {"score_t0.0", "score_t1.0", "score_t0.0_exact", "score_t1.0_variety"} <= set(base)
    assert base["decoding_prompts"] == 6
    after = json.loads((tmp_path / "runs/ad/it1/decoding.json").read_text())
    assert 0.0 <= after["temperature_adaptive"] <= 1.0 and "score_adaptive_sampled" in after
    assert sorted(p.name for p in (tmp_path / "runs/ad/it1/model").iterdir()) == \
        [temperature_head.CONFIG, temperature_head.WEIGHTS]
    shown = subprocess.run([sys.executable, str(ROOT / "examples/adaptive_decoding/table.py"), "ad"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| it0 t0.0", "| it0 t1.0", "| it1 adaptive",
                                                            "| it1 adaptive_sampled"]
    assert "score (exact)" in lines[0] and "temperature (variety)" in lines[0]
    again = subprocess.run([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 stage(s) ran" in again.stdout, again.stdout + again.stderr
