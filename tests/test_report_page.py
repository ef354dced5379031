"""The run's HTML report (selfimprove.stages.report_page, written by the report stage and by
`selfimprove report RUN -o PATH`), the records it joins (selfimprove.core.records), its DVC node, the
run's DVC plots (`dvc plots show` without a warning) and `selfimprove plot`'s labels, on a small finished
run of the default loop made without a model (tests/report_fixture.py). The page in a real browser:
tests/test_report_browser.py."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from report_fixture import HOSTILE, RUN, counts, environment, make_run
from selfimprove.cli import main
from selfimprove.core.records import join
from selfimprove.stages import report_charts


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("report"))


def _page_data(html: str) -> dict:
    found = re.search(r'<script type="application/json" id="records-data">(.*?)</script>', html, re.S)
    return json.loads(found.group(1))


def test_join_puts_a_scorers_lists_on_the_samples_and_pairs_on_their_prompt():
    samples = [{"id": 7, "prompt": "P7", "question": "2+2=", "gold": "4", "sample": j, "completion": c}
               for j, c in enumerate([" #### 4", " #### 5", " #### 4"])]
    votes = [{"id": 7, "prompt": "P7", "question": "2+2=", "gold": "4", "answers": ["4", "5", "4"],
              "completions": [" #### 4", " #### 5", " #### 4"], "votes": {"4": 2, "5": 1}, "majority": "4", "n": 3}]
    pairs = [{"id": 7, "prompt": "P7", "chosen": " #### 4", "rejected": " #### 5", "weight": 0.33},
             {"prompt": "a user's prompt", "chosen": "yes", "rejected": "no"}]  # no id: keyed by its prompt
    prompts = join([pairs, votes, samples])  # any order: samples are joined first
    assert [p["id"] for p in prompts] == [7, "a user's prompt"]
    seven = prompts[0]
    assert seven["question"] == "2+2=" and seven["gold"] == "4"  # the question, not the templated prompt
    assert [s["answers"] for s in seven["samples"]] == ["4", "5", "4"]
    assert seven["samples"][1] == {"sample": 1, "completion": " #### 5", "answers": "5"}
    assert seven["fields"] == {"votes": {"4": 2, "5": 1}, "majority": "4", "n": 3}
    assert seven["pairs"] == [{"chosen": " #### 4", "rejected": " #### 5", "weight": 0.33}]
    # A scorer's file alone: its completions are the samples.
    alone = join([votes])[0]
    assert [s["completion"] for s in alone["samples"]] == [" #### 4", " #### 5", " #### 4"]


def test_the_stage_writes_a_self_contained_page_of_the_run(project):
    html = (project / "runs" / RUN / "report.html").read_text()
    # Nothing is fetched: no script, style, image or font from elsewhere (SVG's xmlns names are not requests).
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|@import|url\(\s*["']?https?:""", html)
    assert "<script src" not in html and "<link rel=\"stylesheet\"" not in html
    data = _page_data(html)
    assert data["iterations"] == [1, 2]
    for k in (1, 2):
        prompts = [p for p in data["prompts"] if p["it"] == k]
        assert {"prompts": len(prompts), "samples": sum(len(p["samples"]) for p in prompts),
                "pairs": sum(len(p["pairs"]) for p in prompts)} == counts(project, k)
    # A record's text can never end the script element and run code of its own.
    assert HOSTILE.strip() not in html and "\\u003c/script>" in html
    assert any(HOSTILE in s["completion"] for p in data["prompts"] for s in p["samples"])  # intact once parsed
    # Metrics with their 95% intervals and the best iteration; charts inline; the training curves.
    assert re.search(r'class="num best">scpo@2<', html)
    assert re.search(r"accuracy.*?0\.8000<div class=\"ci\">\[0\.\d{3}, 0\.\d{3}\]", html, re.S)
    assert html.count("<svg") == 3  # accuracy, maj_at_k, training
    assert "runs/scpo/itK/train_curves" in html and "learning_rate" in html
    # What each stage took: generate's seconds, the trainer's runtime from DVCLive.
    costs = html[html.index('id="costs"'):html.index('id="pairs"')]
    assert "generate" in costs and "1.2500" in costs and "the trainer&#39;s runtime" in costs
    # Pair statistics; the settings each iteration ran with and the loop file.
    pairs = html[html.index('id="pairs"'):html.index('id="records"')]
    assert "5 of 6" in pairs
    settings = html[html.index('id="settings"'):]
    assert "pairs.min_votes" in settings and "generate.extra_n" in settings
    assert "Self-Consistency Preference Optimization" in settings and "loops/scpo.yaml" in settings


def test_the_report_node_depends_on_exactly_what_it_reads(project):
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    node = stages[f"{RUN}-report"]
    argv = shlex.split(node["cmd"])
    inputs = argv[argv.index("runs/scpo/it0/metrics.json"):]
    assert node["deps"] == inputs + ["loops/scpo.yaml"]  # and --loop-file loops/scpo.yaml
    assert argv[argv.index("--loop-file") + 1] == "loops/scpo.yaml"
    assert {"runs/scpo/it1/samples.jsonl", "runs/scpo/it1/votes.jsonl", "runs/scpo/it1/pairs.jsonl",
            "runs/scpo/it2/train_curves"} <= set(inputs)
    assert not any("outputs.jsonl" in path or path.endswith("/model") for path in inputs)
    assert node["outs"] == ["runs/scpo/report.html", {"runs/scpo/curves.json": {"cache": False}}]
    assert node["params"][0] == RUN and "code.report-report-html-j2" in node["params"]
    # No node declares plots of its own: DVC would draw curves.json twice and read every file of DVCLive's
    # directory (its params.yaml too) as a series, warning on each.
    assert not [name for name, stage in stages.items() if "plots" in stage]
    assert {"runs/scpo/it1/train_curves": {"cache": False}} in stages[f"{RUN}-it1-train"]["outs"]


def test_dvc_plots_show_prints_no_warning_on_the_run(project, tmp_path):
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True, env=environment())
    shown = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=project, capture_output=True,
                           text=True, timeout=120, env=environment())
    assert shown.returncode == 0 and "WARNING" not in shown.stdout + shown.stderr, shown.stdout[-2000:] + shown.stderr
    document = json.loads(shown.stdout)
    assert not document.get("errors"), document["errors"]
    curves = document["data"]["runs/scpo/curves.json"][0]["content"]["data"]["values"]
    assert {row["iteration"] for row in curves} == {0, 1, 2}
    assert "runs/scpo/it1/train_curves/plots/metrics/loss.tsv" in document["data"]
    assert not any(name.endswith(("params.yaml", "train_curves/metrics.json")) for name in document["data"])
    html = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(tmp_path / "plots")], cwd=project,
                          capture_output=True, text=True, timeout=120, env=environment())
    assert html.returncode == 0 and "WARNING" not in html.stdout + html.stderr, html.stdout + html.stderr


def test_selfimprove_report_writes_the_same_page_where_asked(project, monkeypatch, tmp_path):
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["report", RUN, "-o", str(tmp_path / "pages" / "scpo.html")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"report: {tmp_path / 'pages' / 'scpo.html'}"
    assert (tmp_path / "pages" / "scpo.html").read_text() == (project / "runs" / RUN / "report.html").read_text()
    missing = CliRunner().invoke(main, ["report", "irpo"])
    assert missing.exit_code == 2 and "no run named 'irpo' is compiled" in missing.output
    assert "(runs: scpo)" in missing.output


def test_a_metric_panel_names_its_unit_its_band_and_the_best_iteration():
    plt = report_charts.pyplot()
    per_iteration = {0: {"accuracy": 0.25, "problems": 40, "maj_at_k": 0.5}, 1: {"accuracy": 0.5, "problems": 40,
                                                                                 "maj_at_k": 0.75}}
    best = {"iteration": 1, "metric": "accuracy", "value": 0.5, "better": "higher"}
    figure, (first, second) = plt.subplots(2, 1)
    report_charts.draw_metric(first, "accuracy", [("r", per_iteration, best)])
    report_charts.draw_metric(second, "maj_at_k", [("r", per_iteration, best)])
    assert first.get_ylabel() == "accuracy (fraction of problems)"
    assert first.get_xlabel() == "iteration (0 = base model)"
    assert [t.get_text() for t in first.get_legend().get_texts()] == ["r", "95% interval", "r@best (iteration 1)"]
    assert "r@best (iteration 1, by accuracy)" in [t.get_text() for t in second.get_legend().get_texts()]
    plt.close(figure)


def test_a_run_compiled_before_the_page_gets_its_metrics_and_a_note(project, tmp_path, monkeypatch):
    old = tmp_path / "old"
    shutil.copytree(project, old)
    document = yaml.safe_load((old / "dvc.yaml").read_text())
    node = document["stages"][f"{RUN}-report"]
    argv = shlex.split(node["cmd"])
    node["cmd"] = shlex.join(argv[:argv.index("--html")] + [p for p in argv if p.endswith(".json") and "/it" in p])
    (old / "dvc.yaml").write_text(yaml.safe_dump(document))
    monkeypatch.chdir(old)
    result = CliRunner().invoke(main, ["report", RUN])
    assert result.exit_code == 0, result.output
    assert "note: scpo was compiled by an older selfimprove" in result.output
    assert "selfimprove compile loops/scpo.yaml" in result.output
    data = _page_data((old / f"{RUN}.html").read_text())
    assert data == {"iterations": [], "prompts": []}
