"""DPO + NLL with a per-pair weight, as ScPO (Prasad et al. 2024, eq. 2) and IRPO (Pang et al. 2024) define it:

    L = w * ( -log sigmoid(beta * [(log pi(y+|x) - log ref(y+|x)) - (log pi(y-|x) - log ref(y-|x))])
              - alpha * log pi(y+|x) / |y+| )

TRL's DPOTrainer has no per-example weight (its `use_weighting` is WPO, a different thing), and its
`sft` loss term is the NLL averaged over all chosen tokens of the batch, not per sequence. So we subclass
it: a `weight` column travels through the collator, and `_compute_loss` computes the loss above. With
w = 1 this is IRPO's loss; ScPO uses w = (V(y+) - V(y-)) / k.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import use_adapter


def weighted_dpo_nll_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
                          ref_rejected_logps: torch.Tensor, chosen_lengths: torch.Tensor, weights: torch.Tensor,
                          beta: float, alpha: float) -> tuple[torch.Tensor, dict]:
    """Mean over the batch of the weighted loss; log-probs are sums over each completion's tokens.
    Returns the loss and its parts (unweighted means) for logging."""
    margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    dpo = -F.logsigmoid(beta * margin)
    nll = -chosen_logps / chosen_lengths.clamp(min=1)
    loss = (weights * (dpo + alpha * nll)).mean()
    return loss, {"dpo": dpo.mean().item(), "nll": nll.mean().item(), "weight": weights.mean().item(),
                  "reward_accuracy": (margin > 0).float().mean().item()}


class WeightedPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator, plus a float `weight` per pair (1.0 when the dataset has none)."""

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        batch["weight"] = torch.tensor([float(e.get("weight", 1.0)) for e in examples])
        return batch


class WeightedDPOTrainer(DPOTrainer):
    """DPOTrainer whose loss is `weighted_dpo_nll_loss`; alpha is the NLL weight (0 for plain DPO)."""

    def __init__(self, *args, alpha: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = alpha

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "weight" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "weight"]

    def _completion_logps(self, model, inputs, labels, seq_len):
        model_kwargs = {k: v for k, v in inputs.items() if k not in {"completion_mask", "weight"}}
        outputs = model(**model_kwargs, labels=labels, use_cache=False, fused_lm_head=True)
        return outputs.log_probs[:, -seq_len:].sum(dim=1)  # TRL's fused head zeroes non-completion positions

    @contextlib.contextmanager
    def _reference(self, model):
        """The reference policy: TRL's frozen copy, or for a LoRA run (no copy) the trained model with
        its adapter disabled, as TRL's own DPO loss does it: the weights the iteration started from."""
        if self.ref_model is not None:
            yield self.ref_model
        elif is_peft_model(self.accelerator.unwrap_model(self.model)):
            with use_adapter(self.accelerator.unwrap_model(self.model), adapter_name=None):
                yield model
        else:  # precompute_ref_log_probs: the batch would carry them, which this loss does not read
            raise ValueError("weighted DPO computes the reference log-probs itself; leave precompute_ref_log_probs off")

    def _compute_loss(self, model, inputs, return_outputs=False):
        mode = "train" if self.model.training else "eval"
        completion_mask = inputs["completion_mask"]
        seq_len = completion_mask.size(1) - 1
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        chosen_logps, rejected_logps = self._completion_logps(model, inputs, labels, seq_len).chunk(2)
        with torch.no_grad(), self._reference(model) as reference:
            ref_chosen, ref_rejected = self._completion_logps(reference, inputs, labels, seq_len).chunk(2)
        chosen_lengths = completion_mask.chunk(2)[0].sum(dim=1).to(chosen_logps.dtype)
        loss, parts = weighted_dpo_nll_loss(chosen_logps, rejected_logps, ref_chosen, ref_rejected, chosen_lengths,
                                            inputs["weight"].to(chosen_logps.dtype), self.beta, self.alpha)
        for name, value in parts.items():
            self._metrics[mode][f"weighted/{name}"].append(value)
        return (loss, None) if return_outputs else loss
