"""Stages declare themselves and loops compose them: the compiler and the loop loader know no stage by
name, a pipeline is checked for missing inputs and idle stages, and a stage added to the registry
compiles with nothing else changed."""

import ast
from pathlib import Path

import pytest

from selfimprove.pipeline import compiler
from selfimprove.core import registry
from selfimprove.core.errors import UserError
from selfimprove.loop.loopfile import load_loop

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(ROOT.glob("loops/*.yaml")) + sorted(ROOT.glob("examples/**/*.yaml"))
BASE = """\
name: t
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test}
iterations: 2
"""


def write(tmp_path, text):
    path = tmp_path / "loop.yaml"
    path.write_text(BASE + text)
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_loop_and_example_compiles(path):
    loop = load_loop(path)
    document, params = compiler.compile_loop(loop, ROOT)
    assert f"{loop.name}-report" in document["stages"] and params["code"]
    for name, node in document["stages"].items():
        assert not any(dep.startswith("/") for dep in node["deps"]), name  # no path of the machine


def test_the_compiler_and_the_loader_name_no_stage():
    stage_names = set(registry.STAGES)
    for module in ("pipeline/compiler.py", "loop/loopfile.py", "pipeline/runner.py", "pipeline/status.py"):
        tree = ast.parse((ROOT / "selfimprove" / module).read_text())
        named = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in stage_names}
        assert not named, f"selfimprove/{module} names the stages {named}"


def test_a_pipeline_without_a_stages_input_names_the_stage_and_the_input(tmp_path):
    path = write(tmp_path, "pipeline: [generate, pairs, train, evaluate]\n"
                           "schedule:\n  2: {pipeline: [vote, pairs, train, evaluate]}\n")
    with pytest.raises(UserError) as info:
        load_loop(path)
    assert info.value.lines == [
        f"{path}:5: pipeline: pairs needs votes, which no earlier stage writes; put vote before pairs",
        f"{path}:7: schedule.2.pipeline: vote needs samples, which no earlier stage writes; put generate or system2 before vote"]


def test_a_stage_whose_output_nothing_reads_is_refused(tmp_path):
    path = write(tmp_path, "pipeline: [generate, vote, judge, pairs, train, evaluate]\n"
                           "stages: {pairs: {rule: best_vs_worst}}\n")
    with pytest.raises(UserError) as info:
        load_loop(path)
    assert info.value.lines == [f"{path}:5: pipeline: vote writes votes, which no later stage reads; remove vote "
                                "or put a stage that reads it after it"]


def test_unknown_stages_rules_and_builtins_get_did_you_mean(tmp_path):
    path = write(tmp_path, "pipeline: [generate, vot, pairs, train, evaluate]\nstages: {pairs: {rule: best_vs_wrst}}\n")
    with pytest.raises(UserError) as info:
        load_loop(path)
    text = "\n".join(info.value.lines)
    assert "pipeline: 'vot' is not a stage of an iteration; did you mean 'vote'?" in text
    assert "stages.pairs.rule: 'best_vs_wrst' is not one of:" in text
    with pytest.raises(registry.UnknownName, match="unknown pair rule 'best_vs_wrst'; did you mean 'best_vs_worst'"):
        registry.resolve("pair rule", "best_vs_wrst")
    bad_model = tmp_path / "m.yaml"
    bad_model.write_text(BASE.replace("builtin:tiny-arith", "builtin:tiny-arth"))
    with pytest.raises(UserError, match="unknown builtin model 'tiny-arth'; did you mean 'tiny-arith'"):
        load_loop(bad_model)


def test_a_given_pipeline_compiles_to_the_derived_stage_graph(tmp_path):
    derived = compiler.compile_loop(load_loop(ROOT / "loops/scpo.yaml"), ROOT)
    explicit = compiler.compile_loop(load_loop(ROOT / "loops/scpo.yaml",
                                               ["pipeline=[generate, vote, pairs, train, evaluate]"]), ROOT)
    assert explicit == derived


def test_a_stage_added_to_the_registry_compiles_with_nothing_else_changed(tmp_path, monkeypatch):
    """A new stage is its own module plus one registry line: here a filter of samples between generate
    and vote, declared the way the shipped stages are."""
    (tmp_path / "dedupe_stage.py").write_text('''
from selfimprove.core.stage import Context, Setting, Stage, declaration

SETTINGS = {"keep": Setting(int, 4, "samples kept per prompt", check=lambda v: v >= 1, fix="must be >= 1")}


@declaration
def node(ctx: Context) -> dict:
    return ctx.node(STAGE, cmd=ctx.command(STAGE, samples=ctx.inputs["samples"], out=ctx.outputs["samples"]),
                    deps=[ctx.inputs["samples"]], params=[ctx.section("dedupe")], outs=[ctx.outputs["samples"]])


STAGE = Stage("dedupe", SETTINGS, node=node, reads=("samples",), writes={"samples": "deduped.jsonl"},
              included=lambda settings: False)
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.STAGES, "dedupe", "dedupe_stage:STAGE")  # the one registry line
    path = write(tmp_path, "pipeline: [generate, dedupe, vote, pairs, train, evaluate]\n"
                           "stages: {dedupe: {keep: 2}}\n")
    loop = load_loop(path)
    document, params = compiler.compile_loop(loop, tmp_path)
    vote = document["stages"]["t-it1-vote"]
    assert "--samples runs/t/it1/deduped.jsonl" in vote["cmd"] and vote["deps"] == ["runs/t/it1/deduped.jsonl"]
    assert document["stages"]["t-it2-dedupe"]["params"] == ["t.it2.dedupe", "code.dedupe_stage"]
    assert params["t"]["it1"]["dedupe"] == {"keep": 2}
    with pytest.raises(UserError, match="stages.dedupe.keep: 0 must be >= 1"):
        load_loop(path, ["dedupe.keep=0"])


def test_selfimprove_stages_lists_the_library_and_a_stages_settings_from_the_declarations():
    from click.testing import CliRunner

    from selfimprove.cli import main

    runner = CliRunner()
    listing = runner.invoke(main, ["stages"], terminal_width=200)
    assert listing.exit_code == 0 and all(name in listing.output for name in registry.STAGES)
    settings = runner.invoke(main, ["stages", "filter"], terminal_width=200)
    assert settings.exit_code == 0 and "max_gap_pct" in settings.output and "50.0" in settings.output
    typo = runner.invoke(main, ["stages", "fitler"])
    assert typo.exit_code == 2 and "did you mean 'filter'?" in typo.output
