"""Train-stage throughput against a raw TRL DPOTrainer script (target: stage >= 0.9x raw).

    python benchmarks/train_throughput.py                       # 200 synthetic pairs, the tiny model
    python benchmarks/train_throughput.py --model runs/builtin/tiny-arith --pairs 400

Both sides train the same model on the same pairs with the same batch, max_length, learning rate,
epochs and seed, end to end: load the model, tokenize, train, save. The stage is
`selfimprove.stages.train.train` (weighted DPO + per-sequence NLL, a frozen reference copy, the
checkpoint fingerprint); the raw script is what a user would write with TRL alone: DPOTrainer with
its native DPO + NLL (loss_type ["sigmoid", "sft"]). Each side runs --repeats times, alternating, and
the best run counts (the machine may be shared). Prints pairs per second for both and the ratio.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from selfimprove.core.registry import stage_defaults
from selfimprove.stages.untrained import save_untrained


def synthetic_pairs(count: int, seed: int = 0) -> list[dict]:
    """Addition prompts with a right (chosen) and an off-by-a-little (rejected) worked answer."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        wrong = a + b + rng.choice([-10, -1, 1, 10])
        steps = f" {a % 10}+{b % 10}={a % 10 + b % 10}; ..."
        pairs.append({"prompt": f"{a}+{b}=", "chosen": f"{steps} #### {a + b}", "rejected": f"{steps} #### {wrong}",
                      "weight": 1.0})
    return pairs


def run_stage(settings: dict, pairs: list[dict], model: str, out: Path) -> float:
    from selfimprove.stages.train import train

    start = time.perf_counter()
    train(settings, pairs, model, out)
    return time.perf_counter() - start


def run_raw_trl(settings: dict, pairs: list[dict], model_path: str, out: Path) -> float:
    """A plain TRL script with the same settings."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from selfimprove.models.trainer_config import precision_flags

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    config = DPOConfig(output_dir=str(out / "scratch"), beta=settings["beta"], loss_type=["sigmoid", "sft"],
                       loss_weights=[1.0, settings["nll_weight"]], learning_rate=settings["lr"],
                       num_train_epochs=settings["epochs"], lr_scheduler_type="cosine",
                       per_device_train_batch_size=settings["batch_size"], max_length=settings["max_length"],
                       save_strategy="no", logging_steps=10, report_to="none", seed=settings["seed"],
                       disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
                       # TRL's DPOConfig turns gradient checkpointing and bf16 on by default; the stage's here
                       gradient_checkpointing=settings["gradient_checkpointing"],
                       **precision_flags(settings, torch.cuda.is_available()))
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(out / "model"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model directory (default: the tiny builtin architecture, built here)")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    settings = stage_defaults("train")
    # save_steps beyond the run: the raw script does not checkpoint either.
    settings.update(epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length, lr=1e-4,
                    save_steps=10**6)
    pairs = synthetic_pairs(args.pairs)
    trained = args.pairs * args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or save_untrained(tmp / "base")
        stage, raw = [], []
        for i in range(args.repeats):
            raw.append(run_raw_trl(settings, pairs, model, tmp / f"raw{i}"))
            stage.append(run_stage(settings, pairs, model, tmp / f"stage{i}" / "model"))
            print(f"run {i + 1}: raw TRL {raw[-1]:.2f} s, train stage {stage[-1]:.2f} s", flush=True)
    print(f"{args.pairs} pairs x {args.epochs:g} epochs, batch {args.batch_size}, max_length {args.max_length}, "
          f"best of {args.repeats}")
    print(f"raw TRL:     {min(raw):6.2f} s  {trained / min(raw):7.1f} pairs/s   (runs: {', '.join(f'{t:.2f}' for t in raw)})")
    print(f"train stage: {min(stage):6.2f} s  {trained / min(stage):7.1f} pairs/s   (runs: {', '.join(f'{t:.2f}' for t in stage)})")
    print(f"ratio stage / raw: {min(raw) / min(stage):.2f}")


if __name__ == "__main__":
    main()
