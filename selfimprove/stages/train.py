"""Train the next iteration's model on preference pairs: TRL's DPOTrainer with the weighted DPO + NLL loss.

    python -m selfimprove.stages.train --params params.yaml --run scpo --iteration 1 \
        --model runs/builtin/tiny-arith --pairs runs/scpo/it1/pairs.jsonl --out runs/scpo/it1/model

The reference model is the starting model (TRL freezes a copy when ref_model is None): reference = M_t,
as every paper in this family does. Trainer checkpoints go to a scratch folder beside the output, named
by a fingerprint of the inputs, so a killed train stage resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from selfimprove.models import model_identity
from selfimprove.stages._io import iteration_stage_args, read_jsonl, read_section, revision_for, stage_main


def dpo_config(settings: dict, output_dir: str):
    import torch
    from trl import DPOConfig

    on_gpu = torch.cuda.is_available()
    return DPOConfig(
        output_dir=output_dir, beta=settings["beta"], loss_type="sigmoid",  # the loss itself: weighted_dpo
        learning_rate=settings["lr"], num_train_epochs=settings["epochs"], lr_scheduler_type="cosine",
        per_device_train_batch_size=settings["batch_size"], gradient_accumulation_steps=settings["grad_accum"],
        max_length=settings["max_length"], save_strategy="steps", save_steps=settings["save_steps"],
        save_total_limit=1, logging_steps=10, report_to="none", seed=settings["seed"], data_seed=settings["seed"],
        disable_tqdm=True, gradient_checkpointing=settings["gradient_checkpointing"], use_cpu=not on_gpu, bf16=on_gpu and torch.cuda.is_bf16_supported(),
    )


def train(settings: dict, pairs: list[dict], model_ref: str, out: str | Path, revision: str | None = None) -> dict:
    """Train on pairs and save the model to out; with no pairs the model is saved unchanged."""
    from datasets import Dataset

    from selfimprove import models

    out = Path(out)
    model, tokenizer = models.load(model_ref, revision, for_training=True)
    if not pairs:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return {"pairs": 0, "steps": 0}
    blob = json.dumps([settings, pairs, model_identity(model_ref, revision)], sort_keys=True)
    scratch = out.parent / f".{out.name}-checkpoints" / hashlib.sha256(blob.encode()).hexdigest()[:16]
    # Each pair's weight scales its whole loss (ScPO's vote margin; 1.0 for IRPO's gold pairs).
    dataset = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
                                  "weight": float(p.get("weight", 1.0))} for p in pairs])
    alpha = settings["nll_weight"] if settings["loss"] == "dpo+nll" else 0.0
    trainer = _trainer(model, tokenizer, dataset, dpo_config(settings, str(scratch)), alpha)
    trainer.add_callback(_progress_callback())
    resume = last_complete_checkpoint(scratch)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    trainer.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(scratch.parent, ignore_errors=True)
    return {"pairs": len(pairs), "steps": result.global_step, "loss": result.training_loss,
            "resumed_from_step": int(resume.name.split("-")[1]) if resume else 0}


def last_complete_checkpoint(scratch: Path) -> Path | None:
    """The newest checkpoint the Trainer finished writing. trainer_state.json is written last, so a
    checkpoint without it was cut short by a kill and is removed rather than resumed from."""
    complete = []
    for checkpoint in scratch.glob("checkpoint-*"):
        if (checkpoint / "trainer_state.json").exists():
            complete.append(checkpoint)
        else:
            shutil.rmtree(checkpoint, ignore_errors=True)
    return max(complete, key=lambda c: int(c.name.split("-")[1]), default=None)


def _progress_callback():
    """Report optimizer steps to the `selfimprove run` display."""
    from transformers import TrainerCallback

    from selfimprove.progress import Progress

    class StepProgress(TrainerCallback):
        progress = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = Progress("train", state.max_steps, "steps")
            self.progress.update(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            self.progress.update(state.global_step)

    return StepProgress()


def _trainer(model, tokenizer, dataset, config, alpha: float):
    from selfimprove.weighted_dpo import WeightedDPOTrainer, WeightedPreferenceCollator

    tokenizer.padding_side = "right"
    collator = WeightedPreferenceCollator(pad_token_id=tokenizer.pad_token_id, max_length=config.max_length,
                                          truncation_mode=config.truncation_mode)
    # ref_model=None: TRL loads a frozen copy of the starting model, so reference = M_t.
    return WeightedDPOTrainer(model=model, ref_model=None, args=config, train_dataset=dataset,
                              processing_class=tokenizer, data_collator=collator, alpha=alpha)


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "model", "pairs", "out")
    run = read_section(args.params, args.run)
    figures = train(run[f"it{args.iteration}"]["train"], read_jsonl(args.pairs), args.model, args.out,
                    revision_for(run, args.model))
    print("train: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    stage_main(main)
