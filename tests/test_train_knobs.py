"""The train stage's optimizer and schedule knobs (warmup, scheduler, weight decay, clipping, Adam, ...):
at their defaults the TRL config is the one the stage built before they existed, each non-default value
reaches TRL's config, bad values are reported at validate, and a real run follows the schedule."""

import csv
from pathlib import Path

import pytest

from selfimprove.core.errors import UserError
from selfimprove.core.registry import stage_defaults
from selfimprove.loop.loopfile import load_loop
from selfimprove.models.trainer_config import precision_flags, training_config
from selfimprove.pipeline import compiler

ROOT = Path(__file__).resolve().parent.parent
LOOP = """\
name: t
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test}
iterations: 1
stages:
  train: TRAIN
"""
KNOBS = ("lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm", "optim", "adam_beta1",
         "adam_beta2", "adam_epsilon", "max_steps", "logging_steps", "neftune_noise_alpha")


def defaults(**overrides) -> dict:
    settings = stage_defaults("train")
    settings.update(overrides)
    return settings


def config_before_the_knobs(settings: dict, output_dir: str):
    """The config exactly as the stage built it before the knobs were settings (train.py, before)."""
    import torch
    from trl import DPOConfig, SFTConfig

    on_gpu = torch.cuda.is_available()
    common = dict(
        output_dir=output_dir, learning_rate=settings["lr"], num_train_epochs=settings["epochs"],
        lr_scheduler_type="cosine", per_device_train_batch_size=settings["batch_size"],
        gradient_accumulation_steps=settings["grad_accum"], max_length=settings["max_length"],
        save_strategy="steps", save_steps=settings["save_steps"], save_total_limit=1, logging_steps=10,
        report_to="none", seed=settings["seed"], data_seed=settings["seed"], disable_tqdm=True,
        gradient_checkpointing=settings["gradient_checkpointing"], use_cpu=not on_gpu,
        **precision_flags(settings, on_gpu),
    )
    if settings["loss"] == "sft":
        return SFTConfig(completion_only_loss=True, packing=False, **common)
    return DPOConfig(beta=settings["beta"], loss_type="sigmoid", **common)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")  # the old config's name
@pytest.mark.parametrize("loss", ["dpo+nll", "dpo", "sft"])
def test_at_their_defaults_the_config_is_the_one_built_before(loss, tmp_path):
    import dataclasses

    from transformers import TrainingArguments

    settings = defaults(loss=loss)
    config = training_config(settings, str(tmp_path))
    assert config.to_dict() == config_before_the_knobs(settings, str(tmp_path)).to_dict()
    # and the new knobs are transformers' defaults (the schedule and logging cadence: the stage's own, as before)
    library = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
    for field in ("warmup_steps", "weight_decay", "max_grad_norm", "optim", "adam_beta1", "adam_beta2", "adam_epsilon",
                  "max_steps", "neftune_noise_alpha"):
        assert getattr(config, field) == library[field], field
    assert (config.lr_scheduler_type.value, config.logging_steps) == ("cosine", 10)


@pytest.mark.parametrize("key, value, field, expected, loss", [
    ("lr_scheduler_type", "linear", "lr_scheduler_type", "linear", "dpo+nll"),
    ("lr_scheduler_type", "constant_with_warmup", "lr_scheduler_type", "constant_with_warmup", "sft"),
    ("warmup_ratio", 0.1, "warmup_steps", 0.1, "dpo+nll"),  # transformers 5: a warmup_steps below 1 is a share
    ("warmup_steps", 7, "warmup_steps", 7, "sft"),
    ("weight_decay", 0.01, "weight_decay", 0.01, "dpo+nll"),
    ("max_grad_norm", 0.5, "max_grad_norm", 0.5, "sft"),
    ("optim", "adamw_torch", "optim", "adamw_torch", "dpo"),
    ("adam_beta1", 0.8, "adam_beta1", 0.8, "dpo+nll"),
    ("adam_beta2", 0.95, "adam_beta2", 0.95, "sft"),
    ("adam_epsilon", 1e-6, "adam_epsilon", 1e-6, "dpo+nll"),
    ("max_steps", 5, "max_steps", 5, "dpo+nll"),
    ("logging_steps", 1, "logging_steps", 1, "sft"),
    ("max_length", 99, "max_length", 99, "dpo+nll"),
    ("max_length", 99, "max_length", 99, "sft"),
    ("gradient_checkpointing", True, "gradient_checkpointing", True, "dpo+nll"),
    ("neftune_noise_alpha", 5.0, "neftune_noise_alpha", 5.0, "sft"),
])
def test_each_knob_reaches_trl_s_config_and_changes_nothing_else(key, value, field, expected, loss, tmp_path):
    before = training_config(defaults(loss=loss), str(tmp_path)).to_dict()
    after = training_config(defaults(loss=loss, **{key: value}), str(tmp_path)).to_dict()
    assert after[field] == expected
    changed = {name for name in after if after[name] != before[name]}
    # transformers 5.2x names it activation_checkpointing and keeps gradient_checkpointing in step; 5.19
    # has only gradient_checkpointing
    mirrors = {"gradient_checkpointing": {"activation_checkpointing"} & set(after)}
    assert changed == {field} | mirrors.get(field, set())


def test_neftune_reaches_the_sft_config_only():
    config = training_config(defaults(loss="dpo", neftune_noise_alpha=5.0), "scratch")
    assert config.neftune_noise_alpha is None


def test_the_choices_are_transformers_names():
    from transformers import SchedulerType
    from transformers.training_args import OptimizerNames

    from selfimprove.stages.train import SETTINGS

    assert set(SETTINGS["lr_scheduler_type"].choices) <= {s.value for s in SchedulerType}
    assert set(SETTINGS["optim"].choices) <= {o.value for o in OptimizerNames}
    assert all(SETTINGS[key].omit_default for key in KNOBS)


def test_the_knobs_stay_out_of_params_at_their_defaults_and_are_tracked_when_set(tmp_path):
    (tmp_path / "loop.yaml").write_text(LOOP.replace("TRAIN", "{batch_size: 4}"))
    _, params = compiler.compile_loop(load_loop(str(tmp_path / "loop.yaml")), ROOT)
    assert not set(KNOBS) & set(params["t"]["it1"]["train"])
    _, params = compiler.compile_loop(load_loop(str(tmp_path / "loop.yaml"), ["train.warmup_ratio=0.1"]), ROOT)
    assert params["t"]["it1"]["train"]["warmup_ratio"] == 0.1


def problems_of(tmp_path, train: str) -> list[str]:
    path = tmp_path / "loop.yaml"
    path.write_text(LOOP.replace("TRAIN", train))
    with pytest.raises(UserError) as info:
        load_loop(str(path))
    return [line.split(": ", 1)[1] for line in info.value.lines]


def test_a_misspelt_scheduler_is_one_line_with_the_likely_name(tmp_path):
    lines = problems_of(tmp_path, "{lr_scheduler_type: cosinee}")
    assert len(lines) == 1
    assert lines[0].startswith("stages.train.lr_scheduler_type: 'cosinee' is not one of: cosine, linear, ")
    assert lines[0].endswith("; did you mean 'cosine'?")


def test_a_misspelt_scheduler_through_validate_is_one_line(tmp_path):
    from click.testing import CliRunner

    from selfimprove.cli import main

    (tmp_path / "loop.yaml").write_text(LOOP.replace("TRAIN", "{lr_scheduler_type: cosinee}"))
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "loop.yaml")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("error: ") and line.endswith("did you mean 'cosine'?")


def test_bad_knob_values_are_reported_with_their_fix(tmp_path):
    lines = problems_of(tmp_path, "{warmup_ratio: 1.5, warmup_steps: -1, weight_decay: -0.1, max_grad_norm: -1, "
                                  "adam_beta1: 1.0, adam_beta2: -0.5, adam_epsilon: 0, max_steps: -2, "
                                  "logging_steps: 0, neftune_noise_alpha: -1, optim: adam}")
    expected = ["warmup_ratio: 1.5 is a share of the steps; use a value in [0, 1)", "warmup_steps: -1 must be >= 0",
                "weight_decay: -0.1 must be >= 0", "max_grad_norm: -1.0 must be >= 0 (0 turns clipping off)",
                "adam_beta1: 1.0 must be in [0, 1)", "adam_beta2: -0.5 must be in [0, 1)",
                "adam_epsilon: 0.0 must be > 0", "max_steps: -2 must be >= 0", "logging_steps: 0 must be >= 1",
                "neftune_noise_alpha: -1.0 must be >= 0 (0 = off)"]
    for line in expected:
        assert "stages.train." + line in lines, (line, lines)
    assert any(line.startswith("stages.train.optim: 'adam' is not one of:") for line in lines)


def test_conflicting_warmups_and_neftune_on_a_preference_loss_are_refused(tmp_path):
    lines = problems_of(tmp_path, "{warmup_ratio: 0.1, warmup_steps: 5}")
    assert any("warmup_steps and warmup_ratio are both set" in line for line in lines)
    lines = problems_of(tmp_path, "{loss: dpo, neftune_noise_alpha: 5}")
    assert any("NEFTune noise is for loss sft, and the loss is dpo" in line for line in lines)


def test_a_real_run_warms_up_then_follows_the_cosine_schedule(tiny_model, tmp_path):
    """Logged every step, the learning rate each step used: from 0 it rises linearly over the warmup's 3
    steps, reaches lr at step 4, then decays as a cosine over the 5 steps left."""
    import math

    from selfimprove.stages.train import train

    pairs = [{"prompt": f"{a}+{a}=", "chosen": f" #### {2 * a}", "rejected": f" #### {2 * a + 1}"}
             for a in range(10, 26)]
    settings = defaults(lr=1e-3, batch_size=2, max_length=32, save_steps=1000, warmup_steps=3,
                        lr_scheduler_type="cosine", max_steps=8, logging_steps=1)
    figures = train(settings, pairs, tiny_model, tmp_path / "out", curves=tmp_path / "curves")
    assert figures["steps"] == 8
    with open(next((tmp_path / "curves").rglob("learning_rate.tsv"))) as rows:  # DVCLive's points, one a step
        rates = [float(row["learning_rate"]) for row in csv.DictReader(rows, delimiter="\t")]
    lr = dict(enumerate(rates, start=1))  # optimizer step -> the learning rate it used
    assert len(lr) == 8
    assert lr[1] < lr[2] < lr[3] < lr[4] == pytest.approx(1e-3)  # the warmup, then the peak
    assert [lr[step] for step in (1, 2, 3)] == pytest.approx([0, 1e-3 / 3, 2e-3 / 3])
    for step in range(5, 9):
        assert lr[step] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (step - 4) / 5)), rel=1e-3)
