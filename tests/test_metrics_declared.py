"""Metrics are declared by the stages that write them (selfimprove.core.stage.Metric): the metrics table's
order, the 95% intervals, the headline RUN@best picks by, the stop rules' figures and the run's DVC plot
all read those declarations, so a new method adds no line to a central list."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import selfimprove
from selfimprove import results
from selfimprove.core import registry
from selfimprove.core.stage import Metric, Stage
from selfimprove.loop import stop
from selfimprove.results import plot

PACKAGE = Path(selfimprove.__file__).resolve().parent

# What the central lists said before the stages declared their metrics: the declarations must keep it.
FORMER_ORDER = ["accuracy", "maj_at_k", "sample_accuracy", "pairwise_accuracy", "pairwise_maj_accuracy",
                "decoding_score", "decoding_best_fixed_temperature", "score_adaptive", "temperature_adaptive",
                "pairwise_position_consistency", "judge_agreement", "win_rate_vs_base", "win_position_consistency",
                "thought_rate", "mean_length", "greedy_correct", "maj_correct", "problems", "parse_failure_rate",
                "pairs", "dropped_below_tau", "dropped_ties", "mean_weight", "chosen_correct", "rejected_correct",
                "judge_sample_agreement", "judge_parse_failure_rate", "judge_tie_rate", "judge_mean_score",
                "judge_score_mass"]
FORMER_DENOMINATORS = {"accuracy": "problems", "maj_at_k": "problems", "thought_rate": "problems",
                       "judge_agreement": "judge_eval_candidates", "pairwise_accuracy": "pairwise_pairs",
                       "pairwise_maj_accuracy": "pairwise_pairs", "pairwise_both_orders_right": "pairwise_pairs"}


def _declared_by_stages() -> dict[str, str]:
    """{metric name: the stage declaring it}, read from the stages themselves."""
    return {metric.name: stage.name for stage in registry.stages() for metric in stage.metrics}


def test_every_metric_the_results_name_comes_from_a_stage_declaration():
    declared = _declared_by_stages()
    placed = [m.name for m in registry.metrics() if m.order is not None]
    assert placed == [name for name in placed if name in declared]
    assert [name for name in placed if name in FORMER_ORDER] == FORMER_ORDER
    assert results._ordered(list(reversed(FORMER_ORDER)) + ["zeta", "alpha"]) == FORMER_ORDER + ["alpha", "zeta"]
    for metric in registry.metrics():
        assert metric.denominator is None or metric.denominator in declared, metric
    assert {m.name: m.denominator for m in registry.metrics() if m.denominator} == FORMER_DENOMINATORS
    assert registry.headlines() == ["accuracy", "pairwise_accuracy", "decoding_score"]
    assert all(name in declared and registry.metric(name).better == "higher" for name in registry.headlines())
    lengths, costs = stop._roles("length"), stop._roles("cost")
    assert [m.name for m in lengths] == ["mean_length"] and declared["mean_length"] == "evaluate"
    assert {declared[m.name] for m in costs} == {"generate", "judge", "system2"}


def test_the_declared_curves_are_those_the_run_plot_had():
    curves = {stage.name: stage.curves for stage in registry.stages() if stage.curves}
    assert curves == {"evaluate": ("accuracy", "maj_at_k"), "judge_eval": ("pairwise_accuracy", "pairwise_maj_accuracy"),
                      "decoding": ("decoding_score",)}


OPTION_MAPS = {"ONLY", "SORTS"}  # `show --only pairs`, `--sort`: option names, one of which is also a metric's


def test_no_module_level_list_of_metric_names_is_left():
    """A top-level constant in results or the report that holds declared metric names is a central list."""
    names = set(_declared_by_stages())
    files = sorted((PACKAGE / "results").glob("*.py")) + [PACKAGE / "stages" / "report.py", PACKAGE / "loop" / "stop.py"]
    found = []
    for path in files:
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(getattr(t, "id", "") in OPTION_MAPS for t in targets):
                continue
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                strings = {n.value for n in ast.walk(node.value) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
                if strings & names:
                    found.append(f"{path.name}:{node.lineno}: {sorted(strings & names)}")
    assert not found, "central lists of metric names: " + "; ".join(found)


def test_plot_defaults_budget_and_length_read_the_declarations(tmp_path):
    assert plot.default_metrics(tmp_path, "r", {0: {"accuracy": 0.1, "maj_at_k": 0.2}}) == ["accuracy", "maj_at_k"]
    assert plot.default_metrics(tmp_path, "r", {0: {"pairwise_accuracy": 0.7, "maj_at_k": 0.2}}) == \
        ["pairwise_accuracy", "maj_at_k"]
    assert plot.default_metrics(tmp_path, "r", {0: {"decoding_score": 0.5}}) == ["decoding_score"]
    # the figures the backends write (generate_cost_usd) count towards the budget
    costs = {1: {"generate_cost_usd": 3.0, "judge_cost_usd": 1.5, "problems": 100}}
    assert "API cost so far is 4.5 (budget 4.0)" in stop.fired([{"budget": 4.0}], costs, 1)


# A stage of a new method, registered by the test below: its declaration is all it takes.
NEW_STAGE = Stage("toy", {}, node=lambda ctx: {}, metrics=(
    Metric("toy_rate", better="higher", denominator="toy_items", order=15, curve=True, help="a rate on toy items"),
    Metric("toy_score", better="higher", headline=True, order=5, help="the toy method's headline"),
    Metric("toy_items", help="toy items measured")))


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(registry.STAGES, "toy", f"{__name__}:NEW_STAGE")


def _write_run(project: Path, per_iteration: dict[int, dict]) -> None:
    for k, figures in per_iteration.items():
        directory = project / "runs" / "r" / f"it{k}"
        directory.mkdir(parents=True)
        (directory / "metrics.json").write_text(json.dumps(figures))


def test_a_registered_stage_s_metric_is_shown_in_order_with_its_interval(tmp_path, toy_registered):
    _write_run(tmp_path, {0: {"accuracy": 0.5, "problems": 100, "toy_rate": 0.25, "toy_items": 40, "zzz": 1},
                          1: {"accuracy": 0.6, "problems": 100, "toy_rate": 0.75, "toy_items": 40, "zzz": 2}})
    rows = results.diff(tmp_path, "r@0", "r@1")["metrics"]
    assert [row["metric"] for row in rows] == ["accuracy", "toy_rate", "problems", "toy_items", "zzz"]
    toy = rows[1]
    assert toy["ci_a"] == pytest.approx(list(results.wilson(10, 40))) and toy["separated"] is True
    assert "ci_a" not in rows[4]  # undeclared: no interval, shown last by name
    assert "toy_rate" in registry.resolve("stage", "toy").curves


def test_a_registered_stage_s_headline_is_what_run_at_best_picks_by(tmp_path, toy_registered):
    _write_run(tmp_path, {0: {"accuracy": 0.9, "toy_score": 0.1}, 1: {"accuracy": 0.1, "toy_score": 0.8}})
    assert registry.headlines()[0] == "toy_score"
    assert results.best_iteration(tmp_path, "r") == {"iteration": 1, "metric": "toy_score", "value": 0.8,
                                                     "better": "higher"}


def test_a_metric_declaration_is_checked():
    with pytest.raises(ValueError, match="better is higher, lower or None"):
        Metric("x", better="more")
    with pytest.raises(ValueError, match="a pattern names no one figure"):
        Metric("x_*", headline=True)
    assert Metric("judge_score_*").matches("judge_score_3") and not Metric("judge_score_*").matches("judge_tie_rate")


def test_reading_the_declarations_imports_no_torch():
    code = ("import sys; from selfimprove import results; from selfimprove.core import registry; "
            "registry.metrics(); assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
