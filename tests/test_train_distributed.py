"""Training in two CPU processes (gloo) through the exact command the compiler writes for
train.processes: 2, and the model it writes loaded and sampled by the next stage's loader."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import torch
import yaml

from selfimprove.stages.train import launcher as train_launcher
from selfimprove.core.registry import stage_defaults
from selfimprove.stages.untrained import save_untrained


def test_two_cpu_processes_train_one_model_that_the_next_stage_loads(tmp_path):
    save_untrained(tmp_path / "base")
    settings = stage_defaults("train")
    settings.update(processes=2, batch_size=2, max_length=32, lr=1e-2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"t": {"model": "base", "model_revision": None,
                                                                "it1": {"train": settings}}}))
    with open(tmp_path / "pairs.jsonl", "w") as f:
        for a in range(10, 18):
            f.write(json.dumps({"prompt": f"{a}+{a}=", "chosen": f" #### {2 * a}", "rejected": f" #### {2 * a + 1}",
                                "weight": 1.0}) + "\n")
    command = (f"{train_launcher(settings)} -m selfimprove.stages.train --params params.yaml --run t "
               "--iteration 1 --model base --pairs pairs.jsonl --out model")
    assert command.startswith("accelerate launch --num_processes 2 --multi_gpu -m selfimprove.stages.train")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("SELFIMPROVE_PROGRESS", None)
    result = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    figure_lines = [line for line in result.stdout.splitlines() if line.startswith("train: ")]
    assert len(figure_lines) == 1, "only the main process prints the figures"
    figures = dict(part.split(" ", 1) for part in figure_lines[0].removeprefix("train: ").split(", "))
    assert figures["processes"] == "2"  # the world size the Trainer's accelerator saw
    assert figures["steps"] == "2"  # 8 pairs / (2 per process * 2 processes)

    from safetensors.torch import load_file

    from selfimprove import models
    from selfimprove.backends.sampling import sample

    base, trained = (load_file(tmp_path / name / "model.safetensors") for name in ("base", "model"))
    assert any(not torch.equal(base[k], trained[k]) for k in base)
    model, tokenizer = models.load(str(tmp_path / "model"))
    completions = sample(model, tokenizer, ["12+12="], 2, 0.7, 0.9, 8, 8, 0)
    assert len(completions[0]) == 2 and all(completions[0])
    assert not list(tmp_path.glob(".model-checkpoints")), "the checkpoint scratch folder is removed"
