"""What the train stage hands TRL's trainers: the DPOConfig or SFTConfig built from the train settings,
the SFT rows, peft's LoraConfig, the DVCLive callback for the training curves, and the checkpoint a killed
run resumes from. Built here without a model or data, so a test can read every field a setting reaches.

The optimizer and schedule knobs (warmup, scheduler, weight decay, clipping, Adam's betas, ...) default to
what the stage did before they were settings: transformers' defaults, except the cosine schedule and the
logging cadence of 10 steps, which the stage always set.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from selfimprove.core.errors import UserError


def training_config(settings: dict, output_dir: str):
    """TRL's DPOConfig, or SFTConfig for loss sft (completion-only loss on prompt/completion rows)."""
    import torch
    from trl import DPOConfig, SFTConfig

    on_gpu = torch.cuda.is_available()
    common = dict(
        output_dir=output_dir, learning_rate=settings["lr"], num_train_epochs=settings["epochs"],
        per_device_train_batch_size=settings["batch_size"], gradient_accumulation_steps=settings["grad_accum"],
        max_length=settings["max_length"], save_strategy="steps", save_steps=settings["save_steps"],
        save_total_limit=1, report_to=trackers(settings), seed=settings["seed"], data_seed=settings["seed"],
        disable_tqdm=True, use_cpu=not on_gpu, **optimizer_args(settings), **precision_flags(settings, on_gpu),
    )
    if settings["loss"] == "sft":
        return SFTConfig(completion_only_loss=True, packing=False, **sft_only_args(settings), **common)
    return DPOConfig(beta=settings["beta"], loss_type="sigmoid", **common)  # the loss itself: weighted_dpo


def optimizer_args(settings: dict) -> dict:
    """The optimizer, schedule and logging knobs both losses share, as TrainingArguments names them.
    transformers 5 has no warmup_ratio: warmup_steps below 1 is the share of all steps."""
    return dict(
        optim=settings["optim"], lr_scheduler_type=settings["lr_scheduler_type"],
        warmup_steps=settings["warmup_steps"] or settings["warmup_ratio"] or 0, weight_decay=settings["weight_decay"],
        max_grad_norm=settings["max_grad_norm"], adam_beta1=settings["adam_beta1"],
        adam_beta2=settings["adam_beta2"], adam_epsilon=settings["adam_epsilon"],
        max_steps=settings["max_steps"] or -1, logging_steps=settings["logging_steps"],
        **_checkpointing(settings["gradient_checkpointing"]),
    )


def _checkpointing(enabled: bool) -> dict:
    """Gradient checkpointing under the name the installed transformers reads: activation_checkpointing
    from 5.2x on (gradient_checkpointing is deprecated there), gradient_checkpointing before (5.19)."""
    from transformers import TrainingArguments

    new_name = "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if new_name else "gradient_checkpointing": enabled}


def sft_only_args(settings: dict) -> dict:
    """Knobs for SFT only: NEFTune's noise on the input embeddings (None: off)."""
    return {"neftune_noise_alpha": settings["neftune_noise_alpha"] or None}


def sft_rows(pairs: list[dict]) -> list[dict]:
    """Prompt/completion rows: an SFT rule's completion (rejection sampling, System 2 distillation),
    else a preference pair's chosen response."""
    rows = []
    for pair in pairs:
        completion = pair.get("completion", pair.get("chosen"))
        if not isinstance(completion, str):
            raise UserError(f"train.loss: sft needs a completion (or chosen) in every row; row {len(rows) + 1} "
                            f"(id {pair.get('id')}) has neither: use an SFT pairs rule (best_of_n, system2)")
        rows.append({"prompt": pair["prompt"], "completion": completion})
    return rows


def trackers(settings: dict) -> list[str] | str:
    """train.report_to as TRL takes it: the user's trackers (wandb, mlflow, tensorboard, ...), or none.
    DVCLive is not among them: the stage adds its own callback, writing into the iteration's directory."""
    named = [name.strip() for name in settings["report_to"].split(",") if name.strip()]
    return named or "none"


def precision_flags(settings: dict, on_gpu: bool) -> dict:
    """DPOConfig's bf16/fp16 flags for train.mixed_precision. auto: with an accelerate config file, the
    file's choice (the launcher exports it as ACCELERATE_MIXED_PRECISION, which the Trainer reads when
    neither flag is set); without one, bf16 on a GPU that supports it, else full precision."""
    import torch

    choice = settings["mixed_precision"]
    if choice == "auto":
        if settings["accelerate_config"]:
            return {}
        choice = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"
    if choice == "fp16" and not on_gpu:
        raise UserError("train.mixed_precision: fp16 needs a CUDA GPU; on the CPU use bf16 or no")
    return {"bf16": choice == "bf16", "fp16": choice == "fp16"}


def lora_config(settings: dict, revision: str | None):
    """peft's LoraConfig for train.lora_*; revision pins a hub base in the saved adapter_config.json."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise UserError(f"train.lora_r: {settings['lora_r']} needs peft: pip install 'selfimprove[lora]', "
                        "or set lora_r: 0 for full fine-tuning") from None
    targets = settings["lora_target_modules"]
    return LoraConfig(r=settings["lora_r"], lora_alpha=settings["lora_alpha"], lora_dropout=settings["lora_dropout"],
                      target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
                      task_type="CAUSAL_LM", revision=revision)


def canonical_model_files(directory: Path) -> None:
    """Make the files of a trained model depend on the training alone, so identical trainings write
    identical bytes and DVC can share what follows them (measured: the same weights, two md5s):
    - peft writes an adapter's target_modules from a set, in an order that changes from process to
      process (string hashing): sorted here;
    - the Trainer pickles its arguments beside the model (training_args.bin), the checkpoint folder's
      path among them, which holds the starting model's file times: removed (nothing loads it)."""
    directory = Path(directory)
    (directory / "training_args.bin").unlink(missing_ok=True)
    path = directory / "adapter_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def curves_callback(directory: Path, resume: bool):
    """DVCLive, DVC's own logger, for the training curves (loss, the DPO terms TRL logs, reward accuracy,
    the learning rate) in `directory` (the node's plots output). Offline: no DVC experiment is saved, no
    dvc.yaml is touched, and DVC Studio is never contacted."""
    os.environ["DVC_STUDIO_OFFLINE"] = "true"
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    class FilesOnly(Live):
        """DVCLive writing its files and nothing else. Its DVC integration is skipped: the stage's node
        declares the directory, and no experiment is saved. dvclive 3.49 also reads the git revision
        before it checks for a commit, so in a project with `git init` and no commit yet it raised
        SCMError and the stage failed (measured)."""

        def _init_dvc(self):
            self._dvc_file = self._init_dvc_file()

    return DVCLiveCallback(live=FilesOnly(dir=str(directory), resume=resume, save_dvc_exp=False, dvcyaml=None,
                                          report=None, monitor_system=False))


def last_complete_checkpoint(scratch: Path) -> Path | None:
    """The newest checkpoint the Trainer finished writing. trainer_state.json is written last, so a
    checkpoint without it, or with one cut short (a kill or a full disk mid-write), was not finished and
    is removed rather than resumed from."""
    complete = []
    for checkpoint in scratch.glob("checkpoint-*"):
        if _complete_json(checkpoint / "trainer_state.json"):
            complete.append(checkpoint)
        else:
            shutil.rmtree(checkpoint, ignore_errors=True)
    return max(complete, key=lambda c: int(c.name.split("-")[1]), default=None)


def _complete_json(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError):
        return False
