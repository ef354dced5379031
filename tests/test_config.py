"""Loop-file validation: every error at once, with file:line, key path and a fix."""

from pathlib import Path

import pytest

from selfimprove.loop.loopfile import load_loop, resolved_params
from selfimprove.core.errors import UserError

GOOD = """\
name: t
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test}
iterations: 3
stages:
  generate: {n: 8, temperature: 0.7}
  pairs: {min_votes: 0.5}
schedule:
  2: {pairs: {min_votes: 0.7}}
"""


def write(tmp_path, text):
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    return path


def test_schedule_overrides_only_its_iteration(tmp_path):
    loop = load_loop(write(tmp_path, GOOD))
    taus = [loop.per_iteration[k]["pairs"]["min_votes"] for k in (1, 2, 3)]
    assert taus == [0.5, 0.7, 0.5]
    assert loop.per_iteration[3]["train"]["beta"] == 0.5  # the ScPO default


def test_set_overrides_with_stage_shorthand_and_yaml11_floats(tmp_path):
    loop = load_loop(write(tmp_path, GOOD), ["iterations=4", "generate.n=16", "train.lr=3e-05"])
    assert loop.iterations == 4
    assert loop.per_iteration[4]["generate"]["n"] == 16
    assert loop.per_iteration[1]["train"]["lr"] == pytest.approx(3e-5)  # "3e-05" is a str in YAML 1.1


def test_all_errors_reported_together_with_lines(tmp_path):
    bad = GOOD.replace("temperature: 0.7", "temprature: 0.7").replace("n: 8", "n: many")
    bad += "itertions: 2\n"
    with pytest.raises(UserError) as info:
        load_loop(write(tmp_path, bad))
    lines = info.value.lines
    assert len(lines) == 3
    assert any(line.startswith(f"{tmp_path}/loop.yaml:6: stages.generate.temprature: unknown key; did you mean 'temperature'?")
               for line in lines)
    assert any("stages.generate.n: expected int, got 'many'" in line for line in lines)
    assert any(":10: itertions: unknown key; did you mean 'iterations'?" in line for line in lines)


def test_schedule_outside_iterations_and_range_checks(tmp_path):
    bad = GOOD.replace("2: {pairs", "0: {pairs").replace("min_votes: 0.5}", "min_votes: 5}")
    with pytest.raises(UserError) as info:
        load_loop(write(tmp_path, bad))
    text = "\n".join(info.value.lines)
    assert "schedule.0: 0 is not an iteration number" in text
    assert "stages.pairs.min_votes: 5.0 is a fraction of n" in text


def test_loading_never_runs_code(tmp_path):
    evil = GOOD + "x: !!python/object/apply:os.system ['touch pwned']\n"
    with pytest.raises(UserError) as info:
        load_loop(write(tmp_path, evil))
    assert "not valid YAML" in info.value.lines[0]
    assert not (tmp_path / "pwned").exists()


def test_resolved_params_have_a_section_per_iteration(tmp_path):
    params = resolved_params(load_loop(write(tmp_path, GOOD)))
    assert set(params) >= {"it0", "it1", "it2", "it3", "data", "model"}
    assert params["it2"]["pairs"]["min_votes"] == 0.7
    assert set(params["it0"]) == {"evaluate"}


def test_the_ray_launcher_is_checked_before_anything_runs(tmp_path):
    """train.launcher: ray names what it needs (Ray Train installed, no accelerate config) in one line."""
    import importlib.util
    import subprocess
    import sys

    loop = (Path(__file__).resolve().parent.parent / "loops/scpo.yaml").read_text()
    (tmp_path / "loop.yaml").write_text(loop)
    (tmp_path / "accelerate.yaml").write_text("compute_environment: LOCAL_MACHINE\n")

    def validate(*sets: str) -> str:
        words = [w for s in sets for w in ("--set", s)]
        result = subprocess.run([sys.executable, "-m", "selfimprove.cli", "validate", "loop.yaml", *words],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        return result.stdout + result.stderr

    installed = importlib.util.find_spec("ray") is not None
    found = validate("train.launcher=ray")
    assert ("pip install 'selfimprove[ray-train]'" in found) != installed, found
    found = validate("train.launcher=ray", "train.accelerate_config=accelerate.yaml")
    assert "launcher: ray starts its own workers" in found and "Traceback" not in found
    assert "is not one of: auto, ray" in validate("train.launcher=slurm")
