"""generate.logprobs: each sample's log p(completion | prompt), as DivPO's probability criterion reads it;
and the prompt's own fields (prompt_<field>) carried from the data to the samples and the scorer records."""

import math

import pytest

from selfimprove.backends.hf import HFBackend
from selfimprove.core.registry import stage_defaults
from selfimprove.stages.generate import generate
from selfimprove.stages._io import read_jsonl
from selfimprove.stages.reward import reward


def test_logprobs_are_the_teacher_forced_sums_and_do_not_depend_on_the_batch(tiny_model):
    import torch

    backend = HFBackend(tiny_model)
    prompts, completions = ["12+34=", "5+6=", "12+34="], [" #### 46", " #### 11 r1", " #### 47"]
    batched = backend.logprobs(prompts, completions, batch_size=3)
    alone = [backend.logprobs([p], [c], batch_size=1)[0] for p, c in zip(prompts, completions)]
    assert batched == pytest.approx(alone, abs=1e-4)
    model, tokenizer = backend._load()
    prompt, completion = tokenizer("5+6=")["input_ids"], tokenizer(" #### 11 r1", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt + completion])).logits[0].float(), dim=-1)
    expected = sum(logp[len(prompt) - 1 + i, token].item() for i, token in enumerate(completion))
    assert batched[1] == pytest.approx(expected, abs=1e-4)
    assert all(value < 0 for value in batched) and batched[0] != batched[2]


def test_samples_carry_their_logprob_and_prompt_fields_into_the_reward_records(tiny_model, tmp_path):
    settings = dict(stage_defaults("generate"), n=3, max_new_tokens=8, logprobs=True)
    records = [{"id": 0, "question": "12+34=", "answer": "46", "solution": None, "bad": False},
               {"id": 1, "question": "12++34=", "answer": None, "solution": None, "bad": True}]
    generate(settings, records, tiny_model, tmp_path / "samples.jsonl")
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert [row["prompt_bad"] for row in samples] == [False] * 3 + [True] * 3
    fresh = HFBackend(tiny_model).logprobs([r["prompt"] for r in samples], [r["completion"] for r in samples])
    assert [row["logprob"] for row in samples] == pytest.approx(fresh, abs=1e-4)
    scored, _ = reward(dict(stage_defaults("reward"), source="json_keys", keys="a", max_missing_rate=1.0), samples)
    assert [r["prompt_bad"] for r in scored] == [False, True]
    assert scored[1]["logprobs"] == pytest.approx([row["logprob"] for row in samples[3:]])
    assert all(math.isfinite(v) for r in scored for v in r["logprobs"])
