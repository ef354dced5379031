"""The scripted model of tests/fakes.py keeps to the backend interface the stages call (HFBackend's
methods, argument for argument), answers in queue order, and refuses to invent an answer."""

import inspect

import pytest

from selfimprove.backends.hf import HFBackend

from fakes import ScriptedModel


@pytest.mark.parametrize("method", ["sample", "sample_with_temperatures", "choice_probs", "logprobs", "close"])
def test_the_fake_takes_the_arguments_of_the_real_backend(method):
    real = list(inspect.signature(getattr(HFBackend, method)).parameters)
    fake = list(inspect.signature(getattr(ScriptedModel, method)).parameters)
    assert fake == real


def test_queued_answers_go_out_n_per_prompt_in_order_and_every_call_is_recorded():
    model = ScriptedModel().enqueue(["a", "b", "c", "d"]).enqueue_probs([[0.25, 0.75]])
    done = []
    assert model.sample(["p", "q"], 2, 0.7, 0.9, 16, 4, seed=3, on_batch=done.append) == [["a", "b"], ["c", "d"]]
    assert model.choice_probs(["r"], ["1", "2"]) == [[0.25, 0.75]]
    assert done == [2] and model.prompts == ["p", "q", "r"] and model.batches == [["p", "q"], ["r"]]
    assert model.sampled == ["p", "q"] and model.scored == ["r"] and model.choices == ["1", "2"]
    call = model.calls[0]
    assert (call.n, call.temperature, call.top_p, call.max_new_tokens, call.batch_size, call.seed) == (
        2, 0.7, 0.9, 16, 4, 3)
    with pytest.raises(AssertionError, match=r"queue more with enqueue\(\)"):
        model.sample(["s"], 1, 0.0, 1.0, 8, 8, seed=0)


def test_a_reply_function_sees_the_sample_index_and_a_generator_seeded_by_the_call():
    model = ScriptedModel(reply=lambda prompt, j, rng: f"{prompt}{j}:{rng.randint(0, 9)}")
    first = model.sample(["x", "y"], 2, 1.0, 1.0, 8, 8, seed=5)
    assert [t.split(":")[0] for row in first for t in row] == ["x0", "x1", "y0", "y1"]
    assert model.sample(["x", "y"], 2, 1.0, 1.0, 8, 8, seed=5) == first  # same seed, same texts
