"""Train the next iteration's model on preference pairs with TRL's DPOTrainer (DPO + NLL).

    python -m selfimprove.stages.train --params params.yaml --run scpo --iteration 1 \
        --model runs/builtin/tiny-arith --pairs runs/scpo/it1/pairs.jsonl --out runs/scpo/it1/model

The reference model is the starting model (TRL freezes a copy when ref_model is None): reference = M_t,
as every paper in this family does. Trainer checkpoints go to a scratch folder beside the output, named
by a fingerprint of the inputs, so a killed train stage resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from selfimprove.stages._io import read_jsonl, read_section
from selfimprove.stages.generate import model_identity


def dpo_config(settings: dict, output_dir: str):
    from trl import DPOConfig

    losses = (["sigmoid", "sft"], [1.0, settings["nll_weight"]]) if settings["loss"] == "dpo+nll" else (["sigmoid"], [1.0])
    return DPOConfig(
        output_dir=output_dir, beta=settings["beta"], loss_type=losses[0], loss_weights=losses[1],
        learning_rate=settings["lr"], num_train_epochs=settings["epochs"], lr_scheduler_type="cosine",
        per_device_train_batch_size=settings["batch_size"], gradient_accumulation_steps=settings["grad_accum"],
        max_length=settings["max_length"], save_strategy="steps", save_steps=settings["save_steps"],
        save_total_limit=1, logging_steps=10, report_to="none", seed=settings["seed"], data_seed=settings["seed"],
        disable_tqdm=True,
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
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = _trainer(model, tokenizer, dataset, dpo_config(settings, str(scratch)))
    resume = any(scratch.glob("checkpoint-*"))
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    trainer.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(scratch.parent, ignore_errors=True)
    return {"pairs": len(pairs), "steps": result.global_step, "loss": result.training_loss, "resumed": resume}


def _trainer(model, tokenizer, dataset, config):
    from trl import DPOTrainer

    tokenizer.padding_side = "right"
    return DPOTrainer(model=model, ref_model=None, args=config, train_dataset=dataset, processing_class=tokenizer)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--iteration", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    run = read_section(args.params, args.run)
    revision = run.get("model_revision") if args.iteration == 1 else None
    figures = train(run[f"it{args.iteration}"]["train"], read_jsonl(args.pairs), args.model, args.out, revision)
    print("train: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
