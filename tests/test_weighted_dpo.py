"""ScPO's weighted DPO + NLL loss: against a hand computation, and inside TRL's trainer."""

import math

import pytest
import torch

from selfimprove.models.weighted_dpo import weighted_dpo_nll_loss


def test_loss_matches_a_hand_computation():
    chosen, rejected = torch.tensor([-4.0, -10.0]), torch.tensor([-6.0, -9.0])
    ref_chosen, ref_rejected = torch.tensor([-5.0, -10.0]), torch.tensor([-5.0, -8.0])
    lengths, weights = torch.tensor([4.0, 5.0]), torch.tensor([0.75, 0.25])
    loss, parts = weighted_dpo_nll_loss(chosen, rejected, ref_chosen, ref_rejected, lengths, weights, beta=0.5, alpha=1.0)

    def by_hand(c, r, rc, rr, n, w):
        margin = (c - rc) - (r - rr)  # pair 1: 1 - (-1) = 2;  pair 2: 0 - (-1) = 1
        return w * (-math.log(1 / (1 + math.exp(-0.5 * margin))) + (-c / n))

    expected = (by_hand(-4, -6, -5, -5, 4, 0.75) + by_hand(-10, -9, -10, -8, 5, 0.25)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx((0.75 * (math.log(1 + math.exp(-1.0)) + 1.0)
                                      + 0.25 * (math.log(1 + math.exp(-0.5)) + 2.0)) / 2)
    assert parts["reward_accuracy"] == 1.0


def test_zero_weight_pairs_contribute_nothing_and_alpha_zero_is_plain_dpo():
    args = (torch.tensor([-4.0]), torch.tensor([-6.0]), torch.tensor([-5.0]), torch.tensor([-5.0]), torch.tensor([4.0]))
    assert weighted_dpo_nll_loss(*args, torch.tensor([0.0]), beta=0.5, alpha=1.0)[0].item() == 0.0
    plain, _ = weighted_dpo_nll_loss(*args, torch.tensor([1.0]), beta=0.5, alpha=0.0)
    assert plain.item() == pytest.approx(math.log(1 + math.exp(-1.0)))


def test_trainer_carries_weights_to_the_loss(tmp_path):
    """Zero-weight pairs leave the model untouched; the same pairs at weight 1 move it."""
    from selfimprove.stages.untrained import save_untrained
    from selfimprove.stages.train import train

    save_untrained(tmp_path / "base")
    pairs = [{"prompt": f"{a}+{a}=", "chosen": f" #### {2 * a}", "rejected": f" #### {2 * a + 1}", "weight": 0.0}
             for a in range(10, 18)]
    from selfimprove.core.registry import stage_defaults

    settings = stage_defaults("train")
    settings.update(lr=1e-2, batch_size=4, max_length=32, save_steps=100)
    train(settings, pairs, str(tmp_path / "base"), tmp_path / "zero")
    train(settings, [dict(p, weight=1.0) for p in pairs], str(tmp_path / "base"), tmp_path / "one")

    from safetensors.torch import load_file

    base, zero, one = (load_file(tmp_path / name / "model.safetensors") for name in ("base", "zero", "one"))
    assert all(torch.equal(base[k], zero[k]) for k in base)
    assert any(not torch.equal(base[k], one[k]) for k in base)
