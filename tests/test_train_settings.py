"""The train stage's distributed and LoRA settings: how they compile into the DVC stage (one process
keeps the command of every earlier loop) and how bad values are reported."""

from pathlib import Path

import pytest
import yaml

from selfimprove.pipeline import compiler
from selfimprove.loop.loopfile import load_loop
from selfimprove.core.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
LOOP = """\
name: t
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test}
iterations: 2
stages:
  train: {batch_size: 4}
"""


def train_stages(loop_path, overrides=(), project=ROOT) -> dict:
    document, _ = compiler.compile_loop(load_loop(loop_path, list(overrides)), project)
    return {name: stage for name, stage in document["stages"].items() if name.endswith("-train")}


def test_one_process_compiles_to_the_plain_python_command_of_the_committed_dvc_yaml():
    committed = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in train_stages(ROOT / "loops/scpo.yaml").items():
        k = int(name.split("-it")[1].split("-")[0])
        model = "runs/builtin/tiny-arith" if k == 1 else f"runs/scpo/it{k - 1}/model"
        assert stage["cmd"] == (f"python -m selfimprove.stages.train --params params.yaml --run scpo --iteration {k} "
                                f"--model {model} --pairs runs/scpo/it{k}/pairs.jsonl --out runs/scpo/it{k}/model "
                                f"--curves runs/scpo/it{k}/train_curves")
        assert stage == committed[name]


def test_several_processes_compile_to_accelerate_launch_with_the_same_arguments():
    plain = train_stages(ROOT / "loops/scpo.yaml")
    launched = train_stages(ROOT / "loops/scpo.yaml", ["train.processes=4", "train.mixed_precision=bf16"])
    for name, stage in launched.items():
        prefix = "accelerate launch --num_processes 4 --multi_gpu --mixed_precision bf16 "
        assert stage["cmd"] == prefix + plain[name]["cmd"].removeprefix("python ")
        assert stage["deps"] == plain[name]["deps"]


def test_an_accelerate_config_file_is_passed_through_and_is_a_dependency(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # paths in a loop file are relative to the project root
    (tmp_path / "loop.yaml").write_text(LOOP)
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\n")
    stages = train_stages(tmp_path / "loop.yaml", ["train.processes=8", "train.accelerate_config=fsdp.yaml"], tmp_path)
    stage = stages["t-it1-train"]
    assert stage["cmd"].startswith("accelerate launch --num_processes 8 --config_file fsdp.yaml -m selfimprove.stages.train ")
    assert "fsdp.yaml" in stage["deps"]


def test_stages_that_load_a_lora_iteration_depend_on_its_whole_base_chain(tmp_path):
    (tmp_path / "loop.yaml").write_text(LOOP)
    document, _ = compiler.compile_loop(load_loop(tmp_path / "loop.yaml", ["train.lora_r=8"]), tmp_path)
    stages, base = document["stages"], "runs/builtin/tiny-arith"
    assert {base, "runs/t/it1/model"} <= set(stages["t-it1-evaluate"]["deps"])
    assert {base, "runs/t/it1/model", "runs/t/it2/model"} <= set(stages["t-it2-evaluate"]["deps"])
    assert {base, "runs/t/it1/model"} <= set(stages["t-it2-generate"]["deps"])
    # Full fine-tuning in iteration 2: its model is whole again, and needs nothing beneath it.
    document, _ = compiler.compile_loop(load_loop(tmp_path / "loop.yaml", ["schedule.1.train.lora_r=8"]), tmp_path)
    assert "runs/t/it1/model" not in document["stages"]["t-it2-evaluate"]["deps"]
    assert base not in document["stages"]["t-it2-evaluate"]["deps"]


def test_bad_train_settings_are_reported_with_line_key_and_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "loop.yaml"
    path.write_text(LOOP.replace("{batch_size: 4}", "{processes: 0, mixed_precision: fp32, accelerate_config: "
                                                     "ds.yaml, lora_r: 8, lora_dropout: 1.5}"))
    from selfimprove.stages import train as train_stage

    monkeypatch.setattr(train_stage, "_peft_installed", lambda: False)
    with pytest.raises(UserError) as info:
        load_loop(path)
    lines = info.value.lines
    assert f"{path}:6: stages.train.mixed_precision: 'fp32' is not one of: auto, no, fp16, bf16" in lines
    assert f"{path}:6: stages.train.processes: 0 must be >= 1 (one per GPU; 1 runs without accelerate launch)" in lines
    assert any(line.startswith(f"{path}:6: stages.train.accelerate_config: 'ds.yaml' is not a file") for line in lines)
    assert (f"{path}:6: stages.train.lora_r: 8 must be 0 (full fine-tuning) or a rank > 0 with peft installed: "
            "pip install 'selfimprove[lora]'") in lines
    assert any("stages.train.lora_dropout: 1.5 is a probability" in line for line in lines)


def test_report_to_passes_the_users_trackers_to_trl_and_none_by_default():
    from selfimprove.models.trainer_config import trackers

    from selfimprove.core.registry import stage_defaults

    # nothing phones home by default (report_to is omitted from params at its default; read, it is "")
    assert trackers(stage_defaults("train")) == "none" and trackers({"report_to": ""}) == "none"
    assert trackers({"report_to": "wandb, mlflow"}) == ["wandb", "mlflow"]
