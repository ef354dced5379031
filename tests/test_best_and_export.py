"""RUN@best (the best iteration by the loop's headline metric) in metrics, diff and --from, and
`selfimprove export RUN@K DIR` writing a plain model directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from selfimprove.cli import main

LOOP = """name: sr
model: MODEL
data: {prompts: builtin:arith/train, eval: builtin:arith/test}
iterations: 3
"""


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_model):
    """A compiled run whose accuracy rises and then collapses, as Self-Rewarding's did (README)."""
    from selfimprove.pipeline import compiler
    from selfimprove.loop.loopfile import load_loop
    from selfimprove.pipeline.workspace import ensure_dvc

    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop.yaml").write_text(LOOP.replace("MODEL", tiny_model))
    ensure_dvc(tmp_path)
    compiler.write(tmp_path, load_loop(tmp_path / "loop.yaml"))
    for k, (accuracy, length) in enumerate([(0.113, 9.6), (0.754, 30.0), (0.784, 44.0), (0.238, 61.0)]):
        directory = tmp_path / f"runs/sr/it{k}"
        directory.mkdir(parents=True)
        (directory / "metrics.json").write_text(json.dumps({"problems": 1000, "accuracy": accuracy,
                                                            "mean_length": length}))
    return tmp_path


def test_run_at_best_is_the_iteration_with_the_best_headline_metric(project):
    report = json.loads(CliRunner().invoke(main, ["diff", "sr@0", "sr@best", "--json"]).output)
    assert report["b"] == "sr@2"  # 78.4% before the fall to 23.8%
    shown = CliRunner().invoke(main, ["metrics", "sr"]).output
    assert "sr@2 (best)" in shown and "best: sr@2 by accuracy" in shown


def test_the_loop_file_chooses_the_metric_and_its_direction(project, tiny_model):
    from selfimprove.pipeline import compiler
    from selfimprove.loop.loopfile import load_loop
    from selfimprove.results import best_iteration

    (project / "loop.yaml").write_text(LOOP.replace("MODEL", tiny_model) + "best: {metric: mean_length, better: lower}\n")
    compiler.write(project, load_loop(project / "loop.yaml"))
    assert yaml.safe_load((project / "params.yaml").read_text())["sr"]["best"] == {"metric": "mean_length",
                                                                                  "better": "lower"}
    assert best_iteration(project, "sr") == {"iteration": 0, "metric": "mean_length", "value": 9.6, "better": "lower"}


def test_a_bad_best_section_is_one_line_naming_the_file_and_key(tmp_path, tiny_model):
    from selfimprove.core.errors import UserError
    from selfimprove.loop.loopfile import load_loop

    path = tmp_path / "loop.yaml"
    path.write_text(LOOP.replace("MODEL", tiny_model) + "best: {metric: accuracy, better: sideways}\n")
    with pytest.raises(UserError, match=r"loop.yaml:5: best.better: expected higher or lower, got 'sideways'"):
        load_loop(str(path))


def test_run_at_best_without_any_evaluated_iteration_says_how_to_fix_it(project):
    for path in (project / "runs/sr").glob("it*/metrics.json"):
        path.write_text(json.dumps({"pairs": 3}))
    result = CliRunner().invoke(main, ["diff", "sr@0", "sr@best"])
    assert result.exit_code == 2 and "sr@best: no iteration of sr has the headline metric" in result.output


def test_from_run_at_best_compiles_to_the_best_iterations_model(project, tiny_model):
    (project / "next.yaml").write_text(LOOP.replace("MODEL", tiny_model).replace("name: sr", "name: nxt")
                                       .replace("iterations: 3", "iterations: 1") + "from: sr@best\n")
    result = CliRunner().invoke(main, ["compile", "next.yaml"])
    assert result.exit_code == 0, result.output
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert "runs/sr/it2/model" in stages["nxt-it1-generate"]["deps"]


def _model_files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_export_writes_a_directory_that_models_load_reads(project, tiny_model):
    from selfimprove import models

    (project / "runs/sr/it2/model").mkdir()
    model, tokenizer = models.load(tiny_model)
    models.save(model, tokenizer, project / "runs/sr/it2/model")
    result = CliRunner().invoke(main, ["export", "sr@best", "served"])
    assert result.exit_code == 0, result.output
    assert "sr@2" in result.output and "a full model" in result.output
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= _model_files(project / "served")
    exported, _ = models.load(str(project / "served"))
    assert all((a == b).all() for a, b in zip(exported.state_dict().values(), model.state_dict().values()))
    again = CliRunner().invoke(main, ["export", "sr@2", "served"])
    assert again.exit_code == 2 and "served exists and is not empty" in again.output


def test_export_merges_a_lora_adapter(project, tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model

    from selfimprove import models

    base, tokenizer = models.load(tiny_model, for_training=True)
    adapted = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.01)  # a non-zero update, so merging changes the weights
    adapted.save_pretrained(project / "runs/sr/it2/model")
    tokenizer.save_pretrained(project / "runs/sr/it2/model")
    result = CliRunner().invoke(main, ["export", "sr@2", "served"])
    assert result.exit_code == 0 and "merged LoRA" in result.output, result.output
    assert "adapter_config.json" not in _model_files(project / "served")
    merged, _ = models.load(str(project / "runs/sr/it2/model"))
    exported, _ = models.load(str(project / "served"))
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), merged.state_dict().values()))


def test_export_of_a_temperature_head_keeps_the_head_beside_its_model(project, tiny_model):
    from selfimprove import models
    from selfimprove.models import temperature_head
    from selfimprove.stages import head as head_stage

    head_stage.attach({"temperatures": "0,1", "level": "sequence", "width": 4, "layers": 2, "seed": 0}, tiny_model,
                      project / "runs/sr/it2/model")
    result = CliRunner().invoke(main, ["export", "sr@2", "served"])
    assert result.exit_code == 0 and "temperature head" in result.output, result.output
    assert "config.json" in _model_files(project / "served")  # the language model: what vllm serve reads
    head_dir = project / "served" / "temperature_head"
    assert temperature_head.base_model(str(head_dir))[0] == str(project / "served")
    model, _ = models.load(str(head_dir))
    assert model.config.hidden_size == 128


def test_plot_writes_a_png_of_several_runs_with_the_best_marked(project):
    other = project / "runs/other"
    for k, accuracy in enumerate([0.113, 0.5, 0.6]):
        (other / f"it{k}").mkdir(parents=True)
        (other / f"it{k}/metrics.json").write_text(json.dumps({"problems": 1000, "accuracy": accuracy}))
    result = CliRunner().invoke(main, ["plot", "sr", "other@1", "--metric", "accuracy", "--metric", "mean_length",
                                       "-o", "curves.png"])
    assert result.exit_code == 0, result.output
    image = (project / "curves.png").read_bytes()
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 20_000
    default = CliRunner().invoke(main, ["plot", "sr"])
    assert default.exit_code == 0 and (project / "sr.png").exists()
    missing = CliRunner().invoke(main, ["plot", "sr", "--metric", "acuracy"])
    assert missing.exit_code == 2 and "no run here has the metric 'acuracy'" in missing.output
