"""LoRA iterations: the adapter is the output, loaders merge it into its base (which may be an adapter
itself), the reference is the iteration's starting model, and vLLM-style backends get a merged copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from selfimprove import models
from selfimprove.core.registry import stage_defaults
from selfimprove.stages.train import train

PAIRS = [{"prompt": f"{a}+{a}=", "chosen": f" #### {2 * a}", "rejected": f" #### {2 * a + 1}"} for a in range(10, 22)]


def lora_settings(**changes) -> dict:
    settings = stage_defaults("train")
    settings.update(lr=1e-2, batch_size=4, max_length=32, lora_r=4, **changes)
    return settings


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """base -> it1 (LoRA on base) -> it2 (LoRA on it1 merged)."""
    from selfimprove.stages.untrained import save_untrained

    root = tmp_path_factory.mktemp("lora")
    save_untrained(root / "base")
    train(lora_settings(), PAIRS, str(root / "base"), root / "it1")
    train(lora_settings(), PAIRS, str(root / "it1"), root / "it2")
    return root


def weights(reference) -> dict:
    return models.load(str(reference))[0].state_dict()


def test_each_iteration_stores_a_small_adapter_based_on_the_previous_iterations_model(chain):
    for k, base in ((1, chain / "base"), (2, chain / "it1")):
        assert models.is_adapter(chain / f"it{k}")
        assert json.loads((chain / f"it{k}/adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    size = {name: sum(f.stat().st_size for f in (chain / name).iterdir()) for name in ("base", "it1", "it2")}
    assert size["it2"] < size["base"] / 5


def test_the_chain_loads_to_three_different_models_and_generates(chain):
    from selfimprove.backends.sampling import sample

    base, it1, it2 = (weights(chain / name) for name in ("base", "it1", "it2"))
    assert base.keys() == it1.keys() == it2.keys()  # merged: plain weights, no adapter modules left
    assert any(not torch.equal(base[k], it1[k]) for k in base)
    assert any(not torch.equal(it1[k], it2[k]) for k in base)
    model, tokenizer = models.load(str(chain / "it2"))
    assert all(sample(model, tokenizer, ["12+12="], 2, 0.7, 0.9, 8, 8, 0)[0])


def test_the_reference_of_a_lora_iteration_is_its_starting_model(chain):
    """With the adapter moved away from zero, the trainer's reference still gives the starting
    model's (it1 merged) log-probabilities, and the policy does not."""
    from datasets import Dataset

    from selfimprove.stages.train import _trainer, lora_config, training_config

    settings = lora_settings()
    model, tokenizer = models.load(str(chain / "it1"), for_training=True)
    dataset = Dataset.from_list([dict(p, weight=1.0) for p in PAIRS])
    trainer = _trainer(model, tokenizer, dataset, training_config(settings, str(chain / "scratch")), 1.0,
                       lora_config(settings, None))
    with torch.no_grad():
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)
    inputs = tokenizer(["12+12= #### 24"], return_tensors="pt")
    starting = models.load(str(chain / "it1"))[0]
    with torch.no_grad():
        expected = starting(**inputs).logits
        with trainer._reference(trainer.model) as reference:
            assert torch.allclose(reference(**inputs).logits, expected, atol=1e-5)
        assert not torch.allclose(trainer.model(**inputs).logits, expected, atol=1e-3)


def test_backends_that_read_a_directory_get_the_merged_model_written_once(chain, tmp_path):
    assert models.full_weights_dir(str(chain / "base"), tmp_path) == str(chain / "base")
    merged = models.full_weights_dir(str(chain / "it2"), tmp_path)
    assert not models.is_adapter(merged)
    it2 = weights(chain / "it2")
    assert all(torch.equal(it2[k], v) for k, v in weights(merged).items())
    written = Path(merged).stat().st_mtime_ns
    assert models.full_weights_dir(str(chain / "it2"), tmp_path) == merged
    assert Path(merged).stat().st_mtime_ns == written
