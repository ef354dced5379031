"""A chain of LoRA iterations served as one stacked adapter on its root computes what the merged chain
computes (selfimprove.models.lora_stack): the warm engine relies on it to follow a LoRA loop's policy."""

import json

import pytest
import torch

from selfimprove import models
from selfimprove.models.lora_stack import Unstackable, chain, stack, stacked_rank

peft = pytest.importorskip("peft")


def _adapter(base_dir: str, directory, r: int, alpha: int, targets, seed: int, **extra) -> str:
    """A LoRA adapter on base_dir (itself an adapter when chained) with large random updates, saved as the
    train stage saves one: recording base_dir as its base."""
    base, tokenizer = models.load(base_dir, for_training=True)
    torch.manual_seed(seed)
    adapted = peft.get_peft_model(base, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                         task_type="CAUSAL_LM", **extra))
    with torch.no_grad():
        for name, tensor in adapted.named_parameters():
            if "lora_B" in name:
                tensor.normal_(0, 0.3)
    adapted.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base_dir
    return str(directory)


@pytest.fixture(scope="module")
def three_iterations(tmp_path_factory):
    from selfimprove.stages.untrained import save_untrained

    root = tmp_path_factory.mktemp("chain")
    base = save_untrained(root / "base", layers=2)
    first = _adapter(base, root / "it1", 4, 8, "all-linear", 1)
    second = _adapter(first, root / "it2", 2, 8, ["q_proj", "v_proj"], 2, use_rslora=True)  # fewer modules
    third = _adapter(second, root / "it3", 8, 4, ["down_proj", "q_proj"], 3)
    return root, base, [first, second, third]


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_the_stacked_adapter_on_the_root_equals_the_merged_chain(three_iterations):
    root, base, adapters = three_iterations
    assert chain(adapters[-1]) == (str((root / "base").resolve()), None, [str((root / f"it{k}").resolve())
                                                                          for k in (1, 2, 3)])
    stacked = stack(chain(adapters[-1])[2], base, root / "stacked")
    config = json.loads((stacked / "adapter_config.json").read_text())
    assert config["r"] == stacked_rank(adapters) == 4 + 2 + 8 and config["lora_alpha"] == config["r"]
    ids = torch.tensor([[1, 5, 9, 12, 7, 3, 14, 8]])
    merged, _ = models.load(adapters[-1], for_training=True)
    root_model, _ = models.load(base, for_training=True)
    served = peft.PeftModel.from_pretrained(root_model, str(stacked))
    expected, got = _logits(merged.eval(), ids), _logits(served.eval(), ids)
    assert (expected - got).abs().max().item() < 1e-4
    plain, _ = models.load(base, for_training=True)
    assert (expected - _logits(plain.eval(), ids)).abs().max().item() > 0.1  # the chain does change the model


def test_a_chain_of_one_is_the_adapter_itself_scaled(three_iterations, tmp_path):
    _, base, adapters = three_iterations
    stacked = stack([adapters[0]], base, tmp_path / "one")
    merged, _ = models.load(adapters[0], for_training=True)
    served = peft.PeftModel.from_pretrained(models.load(base, for_training=True)[0], str(stacked))
    ids = torch.tensor([[2, 4, 6, 8]])
    assert (_logits(merged.eval(), ids) - _logits(served.eval(), ids)).abs().max().item() < 1e-4


def test_adapters_the_sum_does_not_describe_are_refused_by_name(three_iterations, tmp_path):
    _, base, _ = three_iterations
    dora = _adapter(base, tmp_path / "dora", 2, 4, ["q_proj"], 4, use_dora=True)
    with pytest.raises(Unstackable, match="DoRA"):
        stack([dora], base, tmp_path / "out")
    assert not (tmp_path / "out").exists()
