"""Train the next iteration's model: on preference pairs with TRL's DPOTrainer and the weighted DPO + NLL
loss, or on prompt/completion rows with TRL's SFTTrainer (`loss: sft`).

    python -m selfimprove.stages.train --params params.yaml --run scpo --iteration 1 \
        --model runs/builtin/tiny-arith --pairs runs/scpo/it1/pairs.jsonl --out runs/scpo/it1/model

With train.processes > 1 (or an accelerate config file) the compiler starts this module under
`accelerate launch` instead of `python`; every process runs the same code on its share of each batch,
and only the main one writes the model and prints the figures.

The reference model is the starting model M_t, as every paper in this family has it (the previous
iteration's model, or the loop's base model with `from: base`): a frozen copy of it for full fine-tuning, the same weights with the adapter switched off for LoRA. Trainer checkpoints
go to a scratch folder beside the output, named by a fingerprint of the inputs, so a killed train
stage resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

from selfimprove.core.errors import writing
from selfimprove.models import model_identity
from selfimprove.models.trainer_config import (curves_callback, last_complete_checkpoint, lora_config, sft_rows,
                                                 canonical_model_files, training_config)
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.scoring.pairs import with_defaults
from selfimprove.stages._io import iteration_stage_parser, read_jsonl, read_section, revision_for, stage_main


def train(settings: dict, pairs: list[dict], model_ref: str, out: str | Path, revision: str | None = None,
          curves: str | Path | None = None, run_name: str | None = None) -> dict:
    """Train on pairs and save the model (with LoRA: the adapter) to out; with no pairs the model is
    saved unchanged. Returns the figures the stage prints; processes is the world size training saw.
    With launcher: ray the training runs as a Ray Train job (selfimprove.models.ray_launch), each worker
    training the trainer build_trainer makes."""
    from selfimprove import models

    out = Path(out)
    pairs = with_defaults(pairs)  # every way pairs reach training passes here: a file from elsewhere may lack weight
    if pairs and settings.get("launcher", "auto") != "auto":  # another machine's workers (a registry entry, so
        from selfimprove.core.registry import resolve  # that its code counts only where a loop uses it)

        return resolve("train launcher", settings["launcher"])(build_trainer, settings, pairs, model_ref, out,
                                                               revision, curves, run_name)
    blob = json.dumps([settings, pairs, model_identity(model_ref, revision)], sort_keys=True)
    scratch = out.parent / f".{out.name}-checkpoints" / hashlib.sha256(blob.encode()).hexdigest()[:16]
    # The training arguments exist before the model loads, so that a DeepSpeed ZeRO-3 config can
    # partition the weights as they load (transformers does so only once they exist).
    config = training_config(settings, str(scratch))
    if run_name:
        config.run_name = run_name  # the iteration as the trackers' run name (RUN-itK)
    model, tokenizer = models.load(model_ref, revision, for_training=True)
    if curves is not None and is_main_process():
        Path(curves).mkdir(parents=True, exist_ok=True)  # the node's plots output exists even without training
    if not pairs:
        if is_main_process():
            models.save(model, tokenizer, out)
            if curves is not None:
                (Path(curves) / "metrics.json").write_text('{"pairs": 0}\n')
        return {"pairs": 0, "steps": 0, "processes": int(os.environ.get("WORLD_SIZE", 1))}
    trainer = build_trainer(settings, pairs, model, tokenizer, config, revision)
    with trainer.accelerator.main_process_first():  # the main process removes cut-short checkpoints first
        resume = last_complete_checkpoint(scratch)
    if curves is not None and trainer.accelerator.is_main_process:
        trainer.add_callback(curves_callback(Path(curves), resume=resume is not None))
    with writing(f"a training checkpoint in {scratch}", where=scratch):
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    # Every process calls save_model (DeepSpeed and FSDP gather the weights); only the main one writes.
    # A peft model saves its adapter only, plus the tokenizer.
    with writing(out):
        trainer.save_model(str(out))
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        canonical_model_files(out)
        shutil.rmtree(scratch.parent, ignore_errors=True)
    return {"pairs": len(pairs), "steps": result.global_step, "loss": result.training_loss,
            "resumed_from_step": int(resume.name.split("-")[1]) if resume else 0,
            "processes": trainer.accelerator.num_processes,
            "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}


def build_trainer(settings: dict, pairs: list[dict], model, tokenizer, config, revision: str | None):
    """The TRL trainer of the stage's loss on the loaded model, with the progress callback: the same for
    every launcher (one process, accelerate's processes, Ray Train's workers)."""
    from datasets import Dataset

    peft_config = lora_config(settings, revision) if settings["lora_r"] else None
    if settings["loss"] == "sft":
        trainer = _sft_trainer(model, tokenizer, Dataset.from_list(sft_rows(pairs)), config, peft_config)
    else:
        # Each pair's weight scales its whole loss (ScPO's vote margin; 1.0 for IRPO's gold pairs).
        dataset = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
                                      "weight": float(p["weight"])} for p in pairs])
        alpha = settings["nll_weight"] if settings["loss"] == "dpo+nll" else 0.0
        trainer = _trainer(model, tokenizer, dataset, config, alpha, peft_config)
    trainer.add_callback(_progress_callback())
    return trainer


def is_main_process() -> bool:
    """Process 0 of a launch (torchrun and the DeepSpeed launcher set RANK), or the only process."""
    return os.environ.get("RANK", "0") == "0"


def _progress_callback():
    """Report optimizer steps to the `selfimprove run` display, from the main process only (all of
    them take the same steps)."""
    from transformers import TrainerCallback

    from selfimprove.stages.progress import Progress

    class StepProgress(TrainerCallback):
        progress = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.progress = Progress("train", state.max_steps, "steps")
                self.progress.update(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(state.global_step)

    return StepProgress()


def _sft_trainer(model, tokenizer, dataset, config, peft_config=None):
    """TRL's SFTTrainer; the loss is on the completion's tokens only (and the EOS TRL appends)."""
    from trl import SFTTrainer

    tokenizer.padding_side = "right"
    return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=peft_config)


def _trainer(model, tokenizer, dataset, config, alpha: float, peft_config=None):
    from selfimprove.models.weighted_dpo import WeightedDPOTrainer, WeightedPreferenceCollator

    tokenizer.padding_side = "right"
    collator = WeightedPreferenceCollator(pad_token_id=tokenizer.pad_token_id, max_length=config.max_length,
                                          truncation_mode=config.truncation_mode)
    # Reference = M_t, the model this iteration starts from. Full fine-tuning: a frozen copy made here,
    # not TRL's reload from model.config's path, which for a merged adapter chain would name the
    # adapter directory rather than the weights in memory. LoRA: ref_model stays None; TRL 1.16 then
    # keeps no copy and computes the reference with the adapter disabled (dpo_trainer.py: `ref_model is
    # None` + `is_peft_model` -> `use_adapter(model, adapter_name=None)` -> `model.disable_adapter()`),
    # i.e. with the weights loaded here: M_t, the previous iteration's merged model.
    ref_model = None if peft_config else copy.deepcopy(model).eval()
    return WeightedDPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=dataset,
                              processing_class=tokenizer, data_collator=collator, alpha=alpha,
                              peft_config=peft_config)


def main(argv=None) -> None:
    parser = iteration_stage_parser(__doc__, "model", "pairs", "out")
    parser.add_argument("--curves", help="DVCLive's directory for the training curves (the node's plots output)")
    args = parser.parse_args(argv)
    run = read_section(args.params, args.run)
    figures = train(run[f"it{args.iteration}"]["train"], read_jsonl(args.pairs), args.model, args.out,
                    revision_for(run, args.model), curves=args.curves, run_name=f"{args.run}-it{args.iteration}")
    if is_main_process():
        print("train: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


@declaration
def _peft_installed() -> bool:
    """Whether peft can be imported, without importing it (validation never imports torch)."""
    return _module_installed("peft")


@declaration
def _module_installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


SETTINGS = {
    "loss": Setting(str, "dpo+nll", "dpo+nll (RPO / ScPO: DPO plus alpha * NLL of the chosen), dpo, or sft "
                    "(TRL's SFTTrainer on each row's completion, else its chosen)", choices=("dpo+nll", "dpo", "sft")),
    "from": Setting(str, "previous", "the model an iteration trains: previous (the last iteration's) or base "
                    "(the loop's model, on data the previous iteration made: Self-Taught Evaluator)",
                    choices=("previous", "base"), omit_default=True),
    "beta": Setting(float, 0.5, "DPO's beta: how far the policy may move from the reference", check=lambda v: v > 0,
                    fix="must be > 0"),
    "nll_weight": Setting(float, 1.0, "alpha in the RPO / ScPO loss"),
    "lr": Setting(float, 5e-6, "learning rate", check=lambda v: v > 0, fix="must be > 0"),
    "epochs": Setting(float, 1.0, "passes over the pairs"),
    "batch_size": Setting(int, 16, "pairs per step and process"),
    "grad_accum": Setting(int, 1, "steps accumulated per optimizer update"),
    "max_length": Setting(int, 256, "longest prompt + response, in tokens"),
    "save_steps": Setting(int, 50, "checkpoint cadence inside the stage, for resume after a crash"),
    "gradient_checkpointing": Setting(bool, False, "true trades ~30% speed for much less activation memory"),
    "seed": Setting(int, 0, "training seed"),
    # Optimizer and schedule (models/trainer_config.py); each default is what training did before it was a setting.
    # Left out: schedulers that need more arguments or an eval set (cosine_with_min_lr, reduce_lr_on_plateau, ...).
    "lr_scheduler_type": Setting(str, "cosine", "learning-rate schedule after the warmup", omit_default=True, choices=(
        "cosine", "linear", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt")),
    "warmup_ratio": Setting(float, 0.0, "linear warmup from 0 to lr over this share of the steps", omit_default=True,
                            check=lambda v: 0 <= v < 1, fix="is a share of the steps; use a value in [0, 1)"),
    "warmup_steps": Setting.count(0, "warmup steps instead (0: warmup_ratio decides)", least=0, omit_default=True),
    "weight_decay": Setting(float, 0.0, "AdamW's weight decay", check=lambda v: v >= 0, fix="must be >= 0",
                            omit_default=True),
    "max_grad_norm": Setting(float, 1.0, "gradient clipping norm; 0 = no clipping", check=lambda v: v >= 0,
                             fix="must be >= 0 (0 turns clipping off)", omit_default=True),
    "optim": Setting(str, "adamw_torch_fused", "the optimizer (transformers' name)", omit_default=True,
                     choices=("adamw_torch_fused", "adamw_torch", "adafactor", "sgd", "adagrad", "rmsprop")),
    "adam_beta1": Setting(float, 0.9, "Adam's beta1", check=lambda v: 0 <= v < 1, fix="must be in [0, 1)",
                          omit_default=True),
    "adam_beta2": Setting(float, 0.999, "Adam's beta2", check=lambda v: 0 <= v < 1, fix="must be in [0, 1)",
                          omit_default=True),
    "adam_epsilon": Setting(float, 1e-8, "Adam's epsilon", check=lambda v: v > 0, fix="must be > 0", omit_default=True),
    "max_steps": Setting.count(0, "stop after this many optimizer steps; 0: epochs decide", least=0, omit_default=True),
    "logging_steps": Setting.count(10, "steps between points of the training curves", omit_default=True),
    "neftune_noise_alpha": Setting(float, 0.0, "loss sft only: NEFTune noise on the input embeddings (5-15); 0 = off",
                                   check=lambda v: v >= 0, fix="must be >= 0 (0 = off)", omit_default=True),
    "report_to": Setting(str, "", "trackers TRL reports to besides DVCLive, comma-separated: wandb, mlflow, "
                         "tensorboard (each needs its package; the run name is RUN-itK); '' = none",
                         omit_default=True),
    # Several processes (one per GPU) through `accelerate launch`; batch_size is per process, so the
    # global batch is batch_size * grad_accum * processes.
    "processes": Setting(int, 1, "training processes, one per GPU (accelerate launch when > 1)",
                         check=lambda v: v >= 1, fix="must be >= 1 (one per GPU; 1 runs without accelerate launch)"),
    "mixed_precision": Setting(str, "auto", "auto: bf16 on a GPU that supports it, else no",
                               choices=("auto", "no", "fp16", "bf16")),
    "accelerate_config": Setting(str, "", "an accelerate config file (DeepSpeed, FSDP), passed through unchanged",
                                 file=True, check=lambda v: not v or Path(v).is_file(),
                                 fix="is not a file: give the path, from the project root, of an accelerate config "
                                     "file (`accelerate config --config_file F` writes one), or '' for none",
                                 reads=Setting.Reads("yaml")),
    # Training across machines as a Ray Train job (selfimprove.models.ray_launch): `processes` workers, one
    # per GPU (or CPU slot), anywhere on the cluster; the stage is the job's driver. None of these is written
    # to params.yaml at its default, so a loop without launcher: ray compiles as before.
    "launcher": Setting(str, "auto", "auto: this machine (one process, or accelerate launch for processes > 1); "
                        "ray: a Ray Train job of `processes` workers on a Ray cluster", choices=("auto", "ray"),
                        omit_default=True),
    "ray_address": Setting(str, "", "launcher ray: the cluster (ray://host:10001, auto); '' = RAY_ADDRESS, else a "
                           "local cluster", omit_default=True),
    "ray_use_gpu": Setting(bool, False, "launcher ray: one GPU per worker (NCCL); false: CPU workers (gloo)",
                           omit_default=True),
    "ray_resources_per_worker": Setting(dict, {}, "launcher ray: each worker's resources, e.g. {CPU: 4, GPU: 1} "
                                        "({}: Ray's default, 1 CPU, or 1 GPU with ray_use_gpu)", omit_default=True),
    "ray_placement": Setting(str, "PACK", "launcher ray: how workers spread over nodes (Ray's placement strategy)",
                             choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"), omit_default=True),
    "ray_storage_path": Setting(str, "", "launcher ray: where checkpoints and the trained model go, shared by every "
                                "node (a shared folder or a URI Ray supports: s3://, gs://); '' = beside the "
                                "output, for a one-machine cluster", omit_default=True),
    "ray_max_failures": Setting.count(1, "launcher ray: times a lost worker restarts the job from its last "
                                      "checkpoint before the stage fails", least=0, omit_default=True),
    # LoRA through peft (pip install 'selfimprove[lora]'); the iteration's output is then an adapter
    "lora_r": Setting(int, 0, "LoRA rank; 0 = full fine-tuning. Higher: more capacity and memory",
                      check=lambda v: v == 0 or (v > 0 and _peft_installed()),
                      fix="must be 0 (full fine-tuning) or a rank > 0 with peft installed: "
                          "pip install 'selfimprove[lora]'"),
    "lora_alpha": Setting(int, 16, "the adapter's update is scaled by lora_alpha / lora_r", check=lambda v: v >= 1,
                          fix="must be >= 1 (the update is scaled by lora_alpha / lora_r)"),
    "lora_dropout": Setting(float, 0.05, "dropout on the adapter's input", check=lambda v: 0 <= v < 1,
                            fix="is a probability; use a value in [0, 1)"),
    "lora_target_modules": Setting(str, "all-linear", "modules the adapter wraps: all-linear, or names, "
                                   "comma-separated: q_proj,v_proj"),
}


@declaration
def _launcher_code(settings: dict) -> list[tuple[str, str]]:
    """The launcher's code counts in the stage's fingerprint where the loop uses one (train.launcher)."""
    return [] if settings.get("launcher", "auto") == "auto" else [("train launcher", settings["launcher"])]


@declaration
def launcher(settings: dict) -> str:
    """How the train stage starts. One process: `python`, the command every loop compiled to before
    multi-process training existed. Otherwise `accelerate launch`: --multi_gpu is its torchrun
    launcher (on a machine without GPUs the stage's use_cpu makes that gloo processes on the CPU;
    --cpu would start one process), and a config file (DeepSpeed, FSDP) is passed through unchanged
    and decides the distributed type itself. `processes` always wins over the file's num_processes,
    since it sets the global batch (batch_size * grad_accum * processes)."""
    if settings.get("launcher") == "ray" or (settings["processes"] == 1 and not settings["accelerate_config"]):
        return "python"  # with launcher ray the stage is the Ray Train job's driver, one process
    flags = [f"--num_processes {settings['processes']}"]
    flags.append(f"--config_file {settings['accelerate_config']}" if settings["accelerate_config"] else "--multi_gpu")
    if settings["mixed_precision"] != "auto":
        flags.append(f"--mixed_precision {settings['mixed_precision']}")
    return "accelerate launch " + " ".join(flags)


@declaration
def node(ctx: Context) -> dict:
    model = ctx.outputs["model"]
    from_base = ctx.settings["train"]["from"] == "base"
    start, start_is_dep = (ctx.base, ctx.base_is_dep) if from_base else (ctx.policy, ctx.policy_is_dep)
    curves = ctx.outputs["train_curves"]
    cmd = ctx.command(STAGE, model=start, pairs=ctx.inputs["pairs"], out=model, curves=curves)
    node = ctx.node(STAGE, cmd=cmd.replace("python", launcher(ctx.settings["train"]), 1),
                    deps=[ctx.inputs["pairs"]] + ([start] if start_is_dep else []),
                    params=[ctx.section("train")] + ctx.revision_keys(start), outs=[model])
    # DVCLive's training curves: an uncached output, drawn by the top-level plot below (plots/metrics
    # only). Declared as a plot of the node, DVC would read every file in it as a series, its params.yaml
    # and metrics.json too, and warn ("'nonetype' object has no attribute 'keys'") on each.
    node["outs"].append({curves: {"cache": False}})
    return node


@declaration
def plot(ctx: Context) -> dict:
    """The iteration's training curves as a top-level DVC plot: every series DVCLive wrote, by step."""
    return {f"{ctx.outputs['train_curves']}/plots/metrics": {"x": "step", "title": f"{ctx.run} iteration {ctx.k}: training"}}


@declaration
def check(settings: dict, problems, top: dict) -> None:
    """A preference loss on SFT examples (a rule that makes one completion per prompt) has nothing to
    reject."""
    from selfimprove.scoring.rules import rule_of

    rule = rule_of(settings)
    if getattr(rule, "makes", "pairs") == "sft" and settings["train"]["loss"] != "sft":
        problems.add(("stages", "train", "loss"), f"{settings['train']['loss']} needs preference pairs, and the pairs "
                     f"rule {settings['pairs']['rule']} makes SFT examples (one completion per prompt); set "
                     "train.loss: sft")
    train = settings["train"]
    if train["warmup_steps"] and train["warmup_ratio"]:
        problems.add(("stages", "train", "warmup_steps"), "warmup_steps and warmup_ratio are both set; give one of "
                     "them (warmup_steps: 0 leaves the warmup to warmup_ratio)")
    if train.get("launcher") == "ray" and train["accelerate_config"]:
        problems.add(("stages", "train", "accelerate_config"), "launcher: ray starts its own workers (Ray Train); an "
                     "accelerate config is for training on this machine: remove one of the two")
    if train.get("launcher") == "ray" and not _module_installed("ray"):
        problems.add(("stages", "train", "launcher"), "ray needs Ray Train: pip install 'selfimprove[ray-train]'")
    if train["neftune_noise_alpha"] and train["loss"] != "sft":
        problems.add(("stages", "train", "neftune_noise_alpha"), "NEFTune noise is for loss sft, and the loss is "
                     f"{train['loss']}; set neftune_noise_alpha: 0, or train.loss: sft")


STAGE = Stage("train", SETTINGS, node=node, reads=("pairs",), writes={"model": "model", "train_curves": "train_curves"},
              check=check, plot=plot, plugins=lambda ctx: _launcher_code(ctx.settings["train"]),
              adapter=lambda settings: settings["train"]["lora_r"] > 0,
              lora_rank=lambda settings: settings["train"]["lora_r"])


if __name__ == "__main__":
    stage_main(main)
