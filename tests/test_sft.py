"""SFT training (TRL's SFTTrainer, completion-only loss), the SFT rules (rejection sampling, System 2
distillation) and `train.from: base`."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from selfimprove.scoring.rules.sft import best_of_n, has_steps, system2

from fakes import ScriptedModel

WORKED = " 7+8=15 r5; 4+3+1=8 r85; #### {}"


def rule(**changes) -> dict:
    """The pairs stage's settings as the stage reads them (every default filled in), with changes."""
    from selfimprove.core.registry import stage_defaults

    return {**stage_defaults("pairs"), **changes}


def vote_record(completions: list[str], gold: str | None = "85", extra: list[bool] | None = None) -> dict:
    from selfimprove.stages.vote import vote

    rows = [{"id": 0, "prompt": "47+38=", "completion": c, "gold": gold, "extra": bool(e)}
            for c, e in zip(completions, extra or [False] * len(completions))]
    return vote(rows)[0]


@pytest.mark.parametrize("completion, steps", [(" #### 85", False), (WORKED.format(85), True), ("85", False),
                                               ("The sum is 85", True), ("", False)])
def test_steps_are_anything_written_before_the_final_answer(completion, steps):
    assert has_steps(completion) is steps


def test_system2_votes_over_the_samples_that_reason_and_targets_the_direct_answer():
    # 3 worked samples agree on 85; the 4 direct guesses (a majority of all 7) say 84 and do not vote.
    record = vote_record([WORKED.format(85)] * 3 + [" #### 84"] * 4)
    examples, stats = system2([record], rule(min_votes=0.5), random.Random(0))
    assert [e["completion"] for e in examples] == [" #### 85"] and examples[0]["chosen"] == " #### 85"
    assert examples[0]["agreement"] == 1.0 and examples[0]["system2_samples"] == 3
    assert stats["system2_accuracy"] == 1.0 and stats["kept_correct"] == 1 and stats["pairs"] == 1
    # over all samples instead, the direct guesses win
    examples, _ = system2([record], rule(min_votes=0.5, steps_only=False), random.Random(0))
    assert examples[0]["completion"] == " #### 84"


def test_system2_drops_a_question_without_a_clear_majority_or_without_reasoning():
    split = vote_record([WORKED.format(85), WORKED.format(86), " #### 85"])
    weak = vote_record([WORKED.format(85), WORKED.format(85), WORKED.format(86), WORKED.format(87)])
    direct = vote_record([" #### 85"] * 4)
    examples, stats = system2([split, weak, direct], rule(min_votes=0.6), random.Random(0))
    assert examples == []
    assert stats["dropped_no_majority"] == 2 and stats["dropped_no_system2_sample"] == 1
    examples, _ = system2([weak], rule(min_votes=0.5), random.Random(0))  # 2 of 4 is enough at 0.5
    assert [e["answer"] for e in examples] == ["85"]


def test_system2_never_reads_gold_for_its_choice_and_writes_the_answer_format():
    record = vote_record([WORKED.format(84)] * 2, gold="85")
    examples, stats = system2([record], rule(min_votes=0.5, answer_format="The answer is {answer}."),
                              random.Random(0))
    assert examples[0]["completion"] == "The answer is 84." and examples[0]["chosen_correct"] is False
    assert stats["system2_accuracy"] == 0.0


def test_system2_trains_the_plain_prompt_when_the_samples_had_a_reasoning_prompt():
    from selfimprove.stages.vote import vote

    rows = [{"id": 0, "prompt": "Q: 2+2? Think step by step.", "question": "2+2?", "gold": "4", "extra": False,
             "completion": "2 and 2 make 4. #### 4"} for _ in range(3)]
    examples, _ = system2(vote(rows), rule(min_votes=0.5, system1_template="Q: {question}\nA:",
                                         answer_format=" #### {answer}"), random.Random(0))
    assert [(e["prompt"], e["completion"]) for e in examples] == [("Q: 2+2?\nA:", " #### 4")]


def scored(mean_scores, correct=None) -> dict:
    return {"id": 1, "prompt": "p", "completions": [f"c{i}" for i in range(len(mean_scores))],
            "mean_scores": mean_scores, "correct": correct}


def test_best_of_n_keeps_the_highest_scored_response_and_breaks_ties_at_random():
    examples, stats = best_of_n([scored([1.0, None, 4.0, 2.0], [False, False, True, False])], rule(), random.Random(0))
    assert [e["completion"] for e in examples] == ["c2"] and examples[0]["score"] == 4.0
    assert stats["chosen_correct"] == 1
    picks = {best_of_n([scored([3.0, 1.0, 3.0])], rule(), random.Random(seed))[0][0]["completion"] for seed in range(20)}
    assert picks == {"c0", "c2"}


def test_best_of_n_drops_prompts_without_scores_or_below_the_floor():
    examples, stats = best_of_n([scored([None, None]), scored([1.0, 2.0])], rule(min_score=3.0), random.Random(0))
    assert examples == [] and stats["dropped_no_score"] == 1 and stats["dropped_below_min_score"] == 1


def test_sft_training_learns_the_completions_with_the_loss_on_them_only(tiny_model, tmp_path):
    import torch

    from selfimprove import models
    from selfimprove.stages.train import SETTINGS, _sft_trainer, sft_rows, train, training_config

    settings = {key: s.default for key, s in SETTINGS.items()}
    settings.update(loss="sft", lr=3e-3, epochs=2, batch_size=8, max_length=64, save_steps=1000)
    rows = [{"prompt": f"{a}+{b}=", "completion": f" #### {a + b}"} for a in range(10, 30) for b in (11, 12)]

    def completion_logprob(directory: str) -> float:
        model, tokenizer = models.load(directory)
        total = 0.0
        for row in rows[:8]:
            prompt = tokenizer(row["prompt"])["input_ids"]
            full = tokenizer(row["prompt"] + row["completion"] + tokenizer.eos_token)["input_ids"]
            with torch.no_grad():
                logprobs = model(torch.tensor([full])).logits.log_softmax(-1)[0]
            total += sum(logprobs[i - 1, full[i]].item() for i in range(len(prompt), len(full)))
        return total / 8

    figures = train(settings, rows, tiny_model, tmp_path / "out")
    assert figures["pairs"] == 40 and figures["steps"] == 10
    assert completion_logprob(str(tmp_path / "out")) > completion_logprob(tiny_model) + 5.0
    # the loss masks the prompt: TRL's labels are -100 (ignored) on the prompt's tokens
    model, tokenizer = models.load(tiny_model, for_training=True)
    from datasets import Dataset

    trainer = _sft_trainer(model, tokenizer, Dataset.from_list(sft_rows(rows[:1])),
                           training_config(settings, str(tmp_path / "scratch")))
    example = trainer.train_dataset[0]
    prompt_length = len(tokenizer(rows[0]["prompt"])["input_ids"])
    ids = example["input_ids"]
    assert example["labels"] == [-100] * prompt_length + ids[prompt_length:]
    assert tokenizer.decode(ids[prompt_length:]).replace(" ", "") == "####21" + tokenizer.eos_token


def test_sft_reads_a_preference_pair_s_chosen_and_names_a_row_with_neither():
    from selfimprove.core.errors import UserError
    from selfimprove.stages.train import sft_rows

    assert sft_rows([{"prompt": "p", "chosen": "a", "rejected": "b"}]) == [{"prompt": "p", "completion": "a"}]
    with pytest.raises(UserError, match="row 2 .id 7. has neither"):
        sft_rows([{"prompt": "p", "completion": "a"}, {"id": 7, "prompt": "q"}])


LOOP = """\
name: b
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test, prompts_size: 8, eval_size: 8}
iterations: 2
stages:
  train: {from: base}
"""


def test_train_from_base_trains_the_loop_s_model_every_iteration(tmp_path):
    from selfimprove.pipeline.compiler import compile_loop
    from selfimprove.loop.loopfile import load_loop

    (tmp_path / "loop.yaml").write_text(LOOP)
    document, params = compile_loop(load_loop(str(tmp_path / "loop.yaml")), tmp_path)
    train2 = document["stages"]["b-it2-train"]
    assert "--model runs/builtin/tiny-arith " in train2["cmd"] and "runs/builtin/tiny-arith" in train2["deps"]
    assert "runs/b/it1/model" not in train2["deps"]
    assert "--model runs/b/it1/model " in document["stages"]["b-it2-generate"]["cmd"]  # the last judge samples
    assert params["b"]["it2"]["train"]["from"] == "base"
    (tmp_path / "loop.yaml").write_text(LOOP.replace("{from: base}", "{lr: 1.0e-4}"))
    document, params = compile_loop(load_loop(str(tmp_path / "loop.yaml")), tmp_path)
    assert "--model runs/b/it1/model " in document["stages"]["b-it2-train"]["cmd"]
    assert "from" not in params["b"]["it2"]["train"]  # the default leaves params as before the setting existed


def test_a_preference_loss_on_sft_examples_is_refused_at_validate(tmp_path):
    from selfimprove.core.errors import UserError
    from selfimprove.loop.loopfile import load_loop

    path = tmp_path / "loop.yaml"
    path.write_text(LOOP.replace("  train: {from: base}\n", "  pairs: {rule: system2}\n  train: {loss: dpo}\n"))
    with pytest.raises(UserError, match=r"loop.yaml:\d+: stages.train.loss: dpo needs preference pairs"):
        load_loop(str(path))


def test_the_system2_loop_compiles_to_generate_vote_pairs_train_evaluate(tmp_path):
    from selfimprove.pipeline.compiler import compile_loop
    from selfimprove.loop.loopfile import load_loop

    root = Path(__file__).resolve().parent.parent
    document, _ = compile_loop(load_loop(str(root / "loops/system2_distillation.yaml")), tmp_path)
    names = [name.split("-", 2)[-1] for name in document["stages"] if name.startswith("system2-it1-")]
    assert names == ["generate", "vote", "pairs", "train", "evaluate"]


S2 = {"step1_template": "rar-rephrase", "step2_template": "rar-respond", "prompt_template": "<u>{question}</u>",
      "n": 2, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 32, "batch_size": 8, "shard_size": 4, "seed": 0}


def test_rephrase_and_respond_feeds_each_rephrasing_to_its_answer_and_writes_system1_samples(tmp_path):
    from selfimprove.stages._io import read_jsonl
    from selfimprove.stages.system2 import system2

    def reply(prompt, j, rng):
        return f"rephrased #{j}" if "rephrase and expand" in prompt else f"answer to [{prompt[-120:]}] #### 7"

    backend = ScriptedModel(reply=reply)
    records = [{"id": 0, "question": "What is 3+4?", "answer": "7"}]
    system2(S2, records, "unused", tmp_path / "samples.jsonl", "Q: {question}", backend=backend)
    step1, step2 = backend.batches
    assert len(step1) == 1 and step1[0].startswith("<u>") and "What is 3+4?" in step1[0]
    assert len(step2) == 2 and "rephrased #0" in step2[0] and "rephrased #1" in step2[1]
    assert all("What is 3+4?" in p for p in step2)  # RaR's answer step sees the question too
    rows = read_jsonl(tmp_path / "samples.jsonl")
    assert [r["prompt"] for r in rows] == ["Q: What is 3+4?"] * 2  # the distilled model's prompt
    assert [r["system2_steps"] for r in rows] == [["rephrased #0"], ["rephrased #1"]]
    assert all(r["completion"].endswith("#### 7") and r["gold"] == "7" for r in rows)


def test_system2_attention_answers_from_the_rewrite_alone(tmp_path):
    from selfimprove.stages.system2 import system2

    backend = ScriptedModel(reply=lambda p, j, rng: "Context: 3 and 4. Question: their sum?" if "unbiased" in p
                            else "#### 7")
    settings = {**S2, "step1_template": "s2a-rewrite", "step2_template": "s2a-answer", "n": 1}
    records = [{"id": 0, "question": "I think it is 9. What is 3+4?", "answer": "7"}]
    system2(settings, records, "unused", tmp_path / "s.jsonl", "{question}", backend=backend)
    assert "I think it is 9" in backend.batches[0][0] and "I think it is 9" not in backend.batches[1][0]
    assert "Context: 3 and 4." in backend.batches[1][0]


def test_a_step_template_with_the_wrong_placeholders_is_one_line(tmp_path):
    from selfimprove.core.errors import UserError
    from selfimprove.stages.system2 import load_steps

    bad = tmp_path / "step2.txt"
    bad.write_text("Answer {question} using {notes}")
    with pytest.raises(UserError, match=r"step2.txt: step 2 of system2 needs \{step1\}"):
        load_steps({**S2, "step2_template": str(bad)})
    assert len(load_steps({**S2, "step1_template": "cot", "step2_template": ""})) == 1


def test_a_system2_pipeline_loop_compiles_with_its_templates_as_code(tmp_path):
    from selfimprove.pipeline.compiler import compile_loop
    from selfimprove.loop.loopfile import load_loop

    (tmp_path / "loop.yaml").write_text(
        "name: s\nmodel: builtin:tiny-arith\ndata: {prompts: builtin:arith/train, eval: builtin:arith/test}\n"
        "iterations: 1\npipeline: [system2, vote, pairs, train, evaluate]\n"
        "stages:\n  system2: {step1_template: rar-rephrase, step2_template: rar-respond}\n"
        "  pairs: {rule: system2, steps_only: false}\n  train: {loss: sft}\n")
    document, _ = compile_loop(load_loop(str(tmp_path / "loop.yaml")), tmp_path)
    node = document["stages"]["s-it1-system2"]
    assert "code.prompts-system2-rar_rephrase-txt" in node["params"] and "code.prompts-system2-rar_respond-txt" in node["params"]
    assert "code.prompts-system2-cot-txt" not in node["params"]
    assert "--samples runs/s/it1/samples.jsonl" in document["stages"]["s-it1-vote"]["cmd"]


def test_the_reward_model_s_training_pairs_put_a_right_response_over_a_wrong_one():
    import importlib.util

    from selfimprove.tasks.answers import extract_final

    path = Path(__file__).resolve().parent.parent / "examples/natural_reasoning/train_reward_model.py"
    spec = importlib.util.spec_from_file_location("train_reward_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.pairs("train", 2000, 0)
    worked_right = worked_wrong = 0
    for row in rows:
        question = row["chosen"].split("=")[0] + "="
        truth = str(sum(map(int, question[:-1].split("+"))))
        assert row["rejected"].startswith(question)
        assert extract_final(row["chosen"]) == truth and extract_final(row["rejected"]) != truth
        worked_right += " r" in row["chosen"]
        worked_wrong += " r" in row["rejected"]
    # The formats as in the seed's own samples: right answers mostly worked, wrong ones mostly direct
    # guesses (a few worked solutions of a nearby problem).
    assert 0.74 < worked_right / len(rows) < 0.82 and 0.005 < worked_wrong / len(rows) < 0.04
