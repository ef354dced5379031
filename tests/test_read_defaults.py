"""Settings left out of params.yaml at their default (omit_default) are filled in once, when a stage reads
its section, so stage code indexes settings[key] and restates no default."""

from pathlib import Path

import yaml

from selfimprove.core.registry import resolve
from selfimprove.loop.loopfile import load_loop
from selfimprove.pipeline import compiler
from selfimprove.stages._io import builtin_stage_args, read_section

ROOT = Path(__file__).resolve().parent.parent
LOOP = """\
name: t
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test}
iterations: 1
stages:
  train: {batch_size: 4}
"""


def compiled_params(tmp_path) -> Path:
    (tmp_path / "loop.yaml").write_text(LOOP)
    _, params = compiler.compile_loop(load_loop(str(tmp_path / "loop.yaml")), ROOT)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_omitted_defaults_stay_out_of_params_and_are_filled_in_when_read(tmp_path):
    path = compiled_params(tmp_path)
    written = yaml.safe_load(path.read_text())["t"]["it1"]
    assert "report_to" not in written["train"] and "head_pick" not in written["generate"]
    run = read_section(str(path), "t")
    for stage in ("generate", "train", "pairs"):
        declared = resolve("stage", stage).settings
        assert set(declared) <= set(run["it1"][stage]), stage
        assert {k: run["it1"][stage][k] for k in written[stage]} == written[stage]  # what params says wins
    assert run["it1"]["train"]["report_to"] == "" and run["it1"]["train"]["batch_size"] == 4
    assert read_section(str(path), "t.it1.pairs") == run["it1"]["pairs"]


def test_a_builtin_model_s_section_is_filled_with_its_builder_s_defaults(tmp_path):
    path = compiled_params(tmp_path)
    assert "positions" not in yaml.safe_load(path.read_text())["builtin"]["tiny-arith"]
    settings, out = builtin_stage_args("Build.", ["--params", str(path), "--section", "builtin.tiny-arith",
                                                  "--out", "o"])
    assert settings["positions"] == 128 and settings["task"] == "arith" and out == "o"


def test_sections_of_stages_no_longer_registered_are_left_as_they_are(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"old": {"it1": {"gone": {"x": 1}}}, "code": {"stages-gone": "abc"}}))
    assert read_section(str(path), "old.it1.gone") == {"x": 1}
