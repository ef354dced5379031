"""Issue 26, items 6 and 7: an iteration that trained on nothing is said on the terminal and can stop the
loop; text the model cannot read and files another step makes are refused at validate; the papercuts
(the exact command to repeat, validate --set, run --dry-run, `stages` at 80 columns, progress per batch)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from selfimprove.cli import main
from selfimprove.loop import stop
from selfimprove.loop.loopfile import load_loop
from selfimprove.pipeline import compiler, empty

ROOT = Path(__file__).resolve().parent.parent
SCPO_STATS = {"prompts": 128, "pairs": 0, "dropped_below_tau": 120, "dropped_ties": 0, "dropped_no_score": 8}


def _project(tmp_path: Path, loop_file: str) -> str:
    loop = load_loop(ROOT / "loops" / loop_file)
    compiler.write(tmp_path, loop)
    return loop.name


def test_an_empty_pairs_file_is_one_line_with_the_rules_reasons_and_the_setting(tmp_path):
    run = _project(tmp_path, "scpo.yaml")
    for k, (pairs, stats) in {1: ("", SCPO_STATS), 2: ('{"prompt": "1+2="}\n', {"pairs": 1})}.items():
        directory = tmp_path / f"runs/{run}/it{k}"
        directory.mkdir(parents=True)
        (directory / "pairs.jsonl").write_text(pairs)
        (directory / "pairs.json").write_text(json.dumps(stats))
    lines = empty.empty_iterations(tmp_path, run, [1, 2, 3])  # 2 trained on a pair, 3 has not run
    assert lines == {1: "scpo iteration 1: 0 training examples, so the model is unchanged: pairs dropped 120 prompts "
                        "whose top answer has under tau votes (pairs.min_votes: 0.5), 8 no score"}


def test_an_empty_filter_output_is_explained_by_the_filter(tmp_path):
    run = _project(tmp_path, "rip.yaml")
    directory = tmp_path / f"runs/{run}/it1"
    directory.mkdir(parents=True)
    (directory / "pairs.jsonl").write_text('{"prompt": "x"}\n')
    (directory / "pairs_kept.jsonl").write_text("")
    (directory / "filter.json").write_text(json.dumps({"filter_prompts": 4, "filter_kept": 0,
                                                       "filter_removed_by_rejected_reward": 4,
                                                       "filter_removed_by_rejected_length": 0,
                                                       "filter_removed_by_gap": 2}))
    line = empty.empty_iterations(tmp_path, run, [1])[1]
    assert line.startswith("rip iteration 1: 0 training examples, so the model is unchanged: filter dropped 4 pairs")
    assert "(filter.min_rejected_reward_pct: 50" in line and "2 pairs whose reward gap" in line


def test_a_stop_rule_on_the_pairs_figure_ends_the_loop_after_an_empty_iteration():
    rules = stop.check_rules([{"metric": "pairs", "below": 1}], None)
    figures = {0: {"accuracy": 0.4}, 1: {"accuracy": 0.4, **SCPO_STATS}}
    assert stop.fired(rules, figures, 1) == ("stop after iteration 1: rule {metric: pairs, below: 1} fired: pairs 0 "
                                             "at iteration 1 is below 1")
    assert stop.fired(rules, {1: {"pairs": 3}}, 1) is None


def test_the_hint_repeats_the_command_with_its_flags():
    from selfimprove.pipeline.runner import command_line

    line = command_line("loops/scpo.yaml", ["iterations=4", "name=my run"], "scpo@2")
    assert line == "selfimprove run loops/scpo.yaml --set iterations=4 --set 'name=my run' --from scpo@2"
    assert shlex.split(line)[2:] == ["loops/scpo.yaml", "--set", "iterations=4", "--set", "name=my run", "--from",
                                     "scpo@2"]


def test_validate_takes_set():
    ok = CliRunner().invoke(main, ["validate", str(ROOT / "loops/scpo.yaml"), "--set", "iterations=2"])
    assert ok.exit_code == 0 and "2 iteration(s)" in ok.output, ok.output
    bad = CliRunner().invoke(main, ["validate", str(ROOT / "loops/scpo.yaml"), "--set", "generate.n=0"])
    assert bad.exit_code == 2 and "--set stages.generate.n: 0 must be >= 1" in bad.output


def test_dry_run_runs_nothing_and_writes_only_what_compile_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop.yaml").write_text((ROOT / "loops/scpo.yaml").read_text())
    result = CliRunner().invoke(main, ["run", "loop.yaml", "--dry-run", "--set", "iterations=1",
                                       "--set", "schedule={}"])
    assert result.exit_code == 0, result.output
    assert "scpo-it1-train: would run" in result.output and "8 stage(s) would run, 0 up to date" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml", "loop.yaml", "params.yaml", "runs"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [".selfimprove.lock"]  # the workspace lock only


def test_dry_run_asks_dvc_which_stages_are_up_to_date(tmp_path, monkeypatch):
    from selfimprove.pipeline import dryrun

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".dvc").mkdir()
    calls = []

    class Done:  # what `dvc status --json` says when iteration 2's pairs setting changed
        returncode, stderr = 0, ""
        stdout = json.dumps({"scpo-it2-pairs": [{"changed deps": {"params.yaml": {"scpo.it2.pairs": "modified"}}}]})

    monkeypatch.setattr(dryrun.subprocess, "run", lambda command, **kw: calls.append(command) or Done())
    (tmp_path / "loop.yaml").write_text((ROOT / "loops/scpo.yaml").read_text())
    result = CliRunner().invoke(main, ["run", "loop.yaml", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert calls[0][-4:] == ["status", "--json", "--with-deps", "scpo-report"]
    up_to_date = ["bootstrap-tiny-arith", "scpo-it0-evaluate", "scpo-it1-generate", "scpo-it2-vote"]
    downstream = ["scpo-it2-pairs", "scpo-it2-train", "scpo-it2-evaluate", "scpo-it3-generate", "scpo-report"]
    assert all(f"{name}: up to date" in result.output for name in up_to_date), result.output
    assert all(f"{name}: would run" in result.output for name in downstream), result.output
    assert "scpo: 9 stage(s) would run, 9 up to date" in result.output


def test_stages_wraps_at_80_columns_without_cutting_words():
    from selfimprove.core.registry import stages
    import sys

    result = CliRunner().invoke(main, ["stages"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    words = {word for line in lines for word in line.replace("│", " ").split()}
    from selfimprove.cli import _summary

    for stage in stages():
        summary = _summary(sys.modules[stage.module].__doc__)
        assert all(word in words for word in summary.split()), (stage.name, summary)
        assert all(word in words for word in ", ".join(stage.writes).split())


def _loop(tmp_path: Path, header: str, reward_model: str) -> Path:
    text = (ROOT / "loops/natural_reasoning_rm.yaml").read_text()
    body = text[text.index("name:"):].replace("runs/reward-models/tiny-arith-rm", reward_model)
    path = tmp_path / "loop.yaml"
    path.write_text(header + body)
    return path


def test_a_file_another_step_makes_is_refused_naming_that_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    header = "# A loop.\n#\n# Run:       python make_rm.py     # writes runs/rm\n#            selfimprove run loop.yaml\n"
    result = CliRunner().invoke(main, ["validate", str(_loop(tmp_path, header, "runs/rm"))])
    assert result.exit_code == 2
    assert result.output.strip().endswith(": stages.reward.model: runs/rm does not exist: another step makes "
                                          "it; run `python make_rm.py` first (the loop file's Run: line), then "
                                          "validate again")
    result = CliRunner().invoke(main, ["validate", str(_loop(tmp_path, "", "runs/rm"))])
    assert "runs/rm does not exist: another step makes it; make it first (a script or another loop's run)" in result.output
    (tmp_path / "runs/rm").mkdir(parents=True)
    assert CliRunner().invoke(main, ["validate", str(_loop(tmp_path, "", "runs/rm"))]).exit_code == 0


@pytest.mark.parametrize("question, refused", [("What is the capital of France? Answer in one word.", True),
                                               ("12+34=", False)])
def test_prompts_outside_the_builtin_vocabulary_are_refused(tmp_path, monkeypatch, question, refused):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": question}) + "\n")
    (tmp_path / "loop.yaml").write_text((ROOT / "loops/scpo.yaml").read_text()
                                        .replace("prompts: builtin:arith/train", "prompts: train.jsonl"))
    result = CliRunner().invoke(main, ["validate", "loop.yaml"])
    assert (result.exit_code == 2) == refused, result.output
    if refused:
        assert ("data.prompts: train.jsonl: 76% of the characters of its first 1 prompts (in data.prompt_template) are "
                "outside builtin:tiny-arith's vocabulary") in result.output


def test_a_local_tokenizer_that_maps_the_prompts_to_unk_is_refused(tmp_path, monkeypatch):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    monkeypatch.chdir(tmp_path)
    tokenizer = Tokenizer(models.WordLevel({"<unk>": 0, **{c: i + 1 for i, c in enumerate("0123456789+=")}},
                                           unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    (tmp_path / "model").mkdir()
    tokenizer.save(str(tmp_path / "model/tokenizer.json"))
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "Name three colours."}) + "\n")
    text = (ROOT / "loops/irpo.yaml").read_text().replace("builtin:tiny-arith", "model")
    (tmp_path / "loop.yaml").write_text(text.replace("prompts: builtin:arith/train", "prompts: train.jsonl"))
    result = CliRunner().invoke(main, ["validate", "loop.yaml"])
    assert "100% of the tokens of its first 1 prompts" in result.output and "outside model's vocabulary" in result.output


def test_generation_progress_moves_per_batch_not_per_shard(tmp_path, monkeypatch):
    from fakes import ScriptedModel
    from selfimprove.core.registry import stage_defaults
    from selfimprove.stages import generate as generating, shards

    updates = []

    class Recorder:
        def __init__(self, stage, total, unit):
            self.total = total

        def update(self, done):
            updates.append(done)

    monkeypatch.setattr(shards, "Progress", Recorder)
    settings = {**stage_defaults("generate"), "n": 2, "extra_n": 2, "batch_size": 4, "shard_size": 10}
    records = [{"id": i, "question": f"{i}+1=", "answer": str(i + 1)} for i in range(10)]
    generating.generate(settings, records, "scripted", tmp_path / "samples.jsonl",
                        backend=ScriptedModel(reply=lambda prompt, j, rng: " #### 1"))
    # one shard of 10 prompts, 2 per forward pass, voting then extra samples: 10 batches, each a step
    assert updates == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10]  # the last: the shard written
