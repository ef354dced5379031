"""Stop rules: which rule fires on which figures (the landed judge loops' collapses as recorded in the
README), one-line errors for bad rules, and a stopped loop that stays stopped under DVC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selfimprove.loop import stop
from selfimprove.core.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
# README, "Self-Rewarding, Meta-Rewarding and TPO, in miniature": greedy accuracy per iteration, and the
# judge's agreement with the truth on the model's own samples (judge_sample_agreement) where recorded.
SELF_REWARDING = {0: {"accuracy": 0.113}, 1: {"accuracy": 0.754, "judge_sample_agreement": 0.71},
                  2: {"accuracy": 0.784, "judge_sample_agreement": 0.50},
                  3: {"accuracy": 0.238, "judge_sample_agreement": 0.46}}
TPO = {0: {"accuracy": 0.113}, 1: {"accuracy": 0.932}, 2: {"accuracy": 0.697, "judge_sample_agreement": 0.42},
       3: {"accuracy": 0.431, "judge_sample_agreement": 0.49}}


def first_stop(rules, figures):
    return next(((k, line) for k in sorted(figures) if k and (line := stop.fired(rules, figures, k))), (None, None))


def test_a_drop_from_the_best_so_far_ends_self_rewarding_at_its_collapse():
    k, line = first_stop([{"metric": "accuracy", "drop": 0.05}], SELF_REWARDING)
    assert k == 3 and "accuracy 0.238 at iteration 3 is 0.546 below the best so far, 0.784 at iteration 2" in line


def test_judge_health_ends_self_rewarding_before_the_collapse():
    k, line = first_stop([{"metric": "judge_sample_agreement", "below": 0.6}], SELF_REWARDING)
    assert k == 2 and line.startswith("stop after iteration 2: rule {metric: judge_sample_agreement, below: 0.6}")


def test_tpo_stops_after_its_first_fall():
    k, _ = first_stop([{"metric": "accuracy", "drop": 0.05}, {"metric": "judge_sample_agreement", "below": 0.6}], TPO)
    assert k == 2


def test_patience_length_and_budget_rules():
    flat = {0: {"accuracy": 0.5}, 1: {"accuracy": 0.6}, 2: {"accuracy": 0.58}, 3: {"accuracy": 0.6}}
    assert stop.fired([{"metric": "accuracy", "patience": 2}], flat, 2) is None  # only one iteration since the best
    assert "has not passed its best, 0.6, in the 2 iteration(s) up to 3" in stop.fired(
        [{"metric": "accuracy", "patience": 2}], flat, 3)
    lengths = {0: {"mean_length": 10.0}, 1: {"mean_length": 19.0}, 2: {"mean_length": 21.0}}
    assert stop.fired([{"length_factor": 2.0}], lengths, 1) is None
    assert "2.10x the base model's 10" in stop.fired([{"length_factor": 2.0}], lengths, 2)
    costs = {1: {"generate_cost": 3.0, "judge_cost": 1.5}, 2: {"generate_cost": 3.0, "judge_cost": 1.5}}
    assert stop.fired([{"budget": 8.0}], costs, 1) is None
    assert "API cost so far is 9 (budget 8.0)" in stop.fired([{"budget": 8.0}], costs, 2)
    assert stop.fired([{"metric": "missing", "above": 0.1}], costs, 2) is None  # no figure: no stop


@pytest.mark.parametrize("rule, message", [
    ("[{metric: accuracy}]", r"stop.0: a rule has exactly one of drop, patience, .*; this one has none"),
    ("[{metric: accuracy, drop: 0.05, below: 0.5}]", r"stop.0: a rule has exactly one of .* this one has drop, below"),
    ("[{drop: 0.05}]", r"stop.0: `drop` needs the metric it watches"),
    ("[{metric: accuracy, drop: -1}]", r"stop.0.drop: must be > 0"),
    ("[{metric: accuracy, patience: 1.5}]", r"stop.0.patience: is a number of iterations"),
    ("[{metric: accuracy, dorp: 0.05}]", r"stop.0.dorp: .*did you mean 'drop'"),
    ("{metric: accuracy, drop: 0.05}", r"stop: expected a list of rules"),
])
def test_a_bad_rule_is_one_line_naming_the_file_line_and_key(tmp_path, rule, message):
    from selfimprove.loop.loopfile import load_loop

    path = tmp_path / "loop.yaml"
    path.write_text((ROOT / "loops/scpo.yaml").read_text() + f"stop: {rule}\n")
    with pytest.raises(UserError, match=r"loop.yaml:\d+: " + message):
        load_loop(str(path))


LOOP = """name: s
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test, prompts_size: 8, eval_size: 8, digits: 2}
iterations: 3
bootstrap: {steps: 20, batch_size: 8, digits: 2}
stages:
  generate: {n: 2, max_new_tokens: 12, batch_size: 16}
  pairs: {min_votes: 0.0}
  train: {batch_size: 4, max_length: 64}
  evaluate: {k: 2, max_new_tokens: 12}
"""


def selfimprove(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfimprove.cli", *args], cwd=project, capture_output=True,
                          text=True, timeout=900)


def test_a_loop_ends_where_its_rule_fires_and_stays_ended_until_the_rule_changes(tmp_path):
    # accuracy is never above 2: the rule fires after iteration 1, whatever the model learnt. A git
    # repository without a commit yet, as a new project has (DVCLive once failed there).
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "loop.yaml").write_text(LOOP + "stop: [{metric: accuracy, below: 2.0}]\n")
    done = selfimprove(tmp_path, "run", "loop.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "s: stop after iteration 1: rule {metric: accuracy, below: 2.0} fired: accuracy" in done.stdout
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    assert "s-it1-evaluate" in stages and not any(name.startswith("s-it2-") for name in stages)
    assert not (tmp_path / "runs/s/it2").exists()
    assert set(json.loads((tmp_path / "runs/s/metrics.json").read_text())) == {"it0", "it1"}
    curves = json.loads((tmp_path / "runs/s/curves.json").read_text())
    assert [row["iteration"] for row in curves] == [0, 1] and all("accuracy" in row for row in curves)
    shown = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0 and "runs/s/curves.json" in shown.stdout, shown.stdout + shown.stderr
    series = sorted(p.relative_to(tmp_path / "runs/s/it1/train_curves/plots/metrics").as_posix()
                    for p in (tmp_path / "runs/s/it1/train_curves/plots/metrics").rglob("*.tsv"))
    # DVCLive's training curves: the loss, and the DPO and NLL terms and reward accuracy of the weighted loss
    assert {"train/loss.tsv", "weighted/dpo.tsv", "weighted/nll.tsv", "weighted/reward_accuracy.tsv"} <= set(series), series
    assert "runs/s/it1/train_curves/plots/metrics/train/loss.tsv" in shown.stdout
    again = selfimprove(tmp_path, "run", "loop.yaml")
    assert again.returncode == 0 and "0 stage(s) ran" in again.stdout and "stop after iteration 1" in again.stdout
    assert "stop after iteration 1" in selfimprove(tmp_path, "status").stdout
    kept = (tmp_path / "runs/s/it1/metrics.json").stat().st_mtime_ns
    (tmp_path / "loop.yaml").write_text(LOOP.replace("iterations: 3", "iterations: 2"))  # the rule removed
    resumed = selfimprove(tmp_path, "run", "loop.yaml")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (tmp_path / "runs/s/it2/metrics.json").exists() and not (tmp_path / "runs/s/stop.json").exists()
    assert (tmp_path / "runs/s/it1/metrics.json").stat().st_mtime_ns == kept  # iteration 1 kept, not redone
    assert "stop after" not in resumed.stdout
