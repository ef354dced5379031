"""The compiler: the repository's dvc.yaml is the compiled default loop; params are tracked per stage."""

from pathlib import Path

import yaml

from selfimprove.pipeline import compiler
from selfimprove.loop.loopfile import load_loop

ROOT = Path(__file__).resolve().parent.parent


def test_repository_dvc_yaml_is_the_compiled_default_loop():
    document, params = compiler.compile_loop(load_loop(ROOT / "loops/scpo.yaml"), ROOT)
    assert yaml.safe_load((ROOT / "dvc.yaml").read_text()) == document, \
        "dvc.yaml is stale: run `selfimprove compile loops/scpo.yaml` in the repository root"
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    # The code fingerprints are those of the code the committed dvc.lock was run with; their keys must
    # be the compiled ones.
    assert {k: v for k, v in committed.items() if k != "code"} == {k: v for k, v in params.items() if k != "code"}, \
        "params.yaml is stale: run `selfimprove compile loops/scpo.yaml` in the repository root"
    assert set(committed["code"]) == set(params["code"])


def test_stage_order_and_dependencies_chain_the_iterations():
    document, _ = compiler.compile_loop(load_loop(ROOT / "loops/scpo.yaml"), ROOT)
    stages = document["stages"]
    assert list(stages)[:3] == ["bootstrap-tiny-arith", "scpo-it0-evaluate", "scpo-it1-generate"]
    assert list(stages)[-2:] == ["scpo-it3-evaluate", "scpo-report"]
    assert {f"runs/scpo/it{k}/metrics.json" for k in range(4)} <= set(stages["scpo-report"]["deps"])
    assert "runs/scpo/it1/model" in stages["scpo-it2-generate"]["deps"]
    assert "runs/scpo/it2/model" in stages["scpo-it3-train"]["deps"]
    assert "code.stages-train" in stages["scpo-it3-train"]["params"]
    assert not any(dep.startswith(("selfimprove/", "/")) for stage in stages.values() for dep in stage["deps"])


def test_evaluate_settings_are_tracked_only_by_evaluate_stages():
    document, _ = compiler.compile_loop(load_loop(ROOT / "loops/scpo.yaml"), ROOT)
    tracking = {name: stage.get("params", []) for name, stage in document["stages"].items()}
    evaluate_keys = {name for name, keys in tracking.items() if any(".evaluate" in k or "eval_size" in k for k in keys)}
    assert evaluate_keys == {f"scpo-it{k}-evaluate" for k in range(4)}
    assert "scpo.data.prompts_size" in tracking["scpo-it1-generate"]
    assert "scpo.data.prompts_size" not in tracking["scpo-it0-evaluate"]


def test_recompiling_replaces_only_this_runs_stages(tmp_path):
    loop = load_loop(ROOT / "loops/scpo.yaml")
    other = {"other-it1-evaluate": {"cmd": "true"}}
    document, params = compiler.compile_loop(loop, tmp_path, other, {"other": {"x": 1}})
    assert "other-it1-evaluate" in document["stages"] and params["other"] == {"x": 1}
    loop.iterations = 2
    document, _ = compiler.compile_loop(loop, tmp_path, document["stages"], params)
    assert "scpo-it3-evaluate" not in document["stages"] and "scpo-it2-evaluate" in document["stages"]


def test_code_fingerprints_follow_imports_including_lazy_ones():
    from selfimprove.pipeline.fingerprint import imported_modules

    train = imported_modules("selfimprove.stages.train")
    assert "selfimprove.models.weighted_dpo" in train  # imported inside a function of stages/train.py
    assert "selfimprove.backends.sampling" not in train  # training does not sample: editing it keeps train cached
    assert "selfimprove.tasks.answers" in imported_modules("selfimprove.stages.vote")
    # Modules that only declare or name things are not code of any stage.
    assert not {"selfimprove.core.registry", "selfimprove.core.stage", "selfimprove.core.validation"} & train
    document, params = compiler.compile_loop(load_loop(ROOT / "loops/scpo.yaml"), ROOT)
    generate = document["stages"]["scpo-it1-generate"]["params"]
    assert {"code.stages-generate", "code.backends-hf"} <= set(generate)  # the backend the loop uses
    assert "code.scoring-rules-votes" in document["stages"]["scpo-it1-pairs"]["params"]  # the rule the loop uses
    assert set(params["code"]) >= {"stages-generate", "backends-hf", "scoring-rules-votes", "stages-bootstrap", "tasks-tinyarith"}


def test_judge_loops_judge_instead_of_voting_and_track_the_judge(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the project: the template is one of its files
    template = tmp_path / "my_judge.txt"
    template.write_text("Question: {question}\nAnswer: {response}\nScore 0-5 as 'Score: N'.")
    loop = load_loop(ROOT / "loops/self_rewarding.yaml", [f"judge.template={template}", "judge.source=judges/big"])
    (tmp_path / "judges/big").mkdir(parents=True)
    document, params = compiler.compile_loop(loop, tmp_path)
    stages = document["stages"]
    assert "self_rewarding-it1-vote" not in stages and "bootstrap-tiny-arith-judge" in stages
    judge = stages["self_rewarding-it2-judge"]
    assert "--model judges/big" in judge["cmd"] and "judges/big" in judge["deps"]  # another local model judges
    assert "code.prompts-additive-txt" not in judge["params"]  # a user's template is a file dependency
    assert "my_judge.txt" in judge["deps"] and "runs/self_rewarding/it2/samples.jsonl" in judge["deps"]
    assert "--scored runs/self_rewarding/it2/judgements.jsonl" in stages["self_rewarding-it2-pairs"]["cmd"]
    assert "runs/self_rewarding/it3/judge.json" in stages["self_rewarding-report"]["deps"]
    assert "self_rewarding.it0.judge" in stages["self_rewarding-it0-evaluate"]["params"]
    assert params["self_rewarding"]["it2"]["judge"]["n"] == 3
    assert params["builtin"]["tiny-arith-judge"]["judge_fraction"] == 0.5
    # The policy judges itself by default: the judge of iteration 2 is iteration 1's model.
    own, _ = compiler.compile_loop(load_loop(ROOT / "loops/self_rewarding.yaml"), ROOT)
    assert "--model runs/self_rewarding/it1/model" in own["stages"]["self_rewarding-it2-judge"]["cmd"]


def test_vote_loops_carry_no_judge_settings():
    _, params = compiler.compile_loop(load_loop(ROOT / "loops/scpo.yaml"), ROOT)
    assert "judge" not in params["scpo"]["it1"] and "judge" not in params["scpo"]["it0"]


def test_meta_rewarding_meta_judges_only_in_the_iterations_that_train_the_judge():
    document, params = compiler.compile_loop(load_loop(ROOT / "loops/meta_rewarding.yaml"), ROOT)
    stages = document["stages"]
    assert "meta_rewarding-it2-metajudge" in stages and "meta_rewarding-it3-metajudge" not in stages
    assert "--judge-pairs runs/meta_rewarding/it2/judge_pairs.jsonl" in stages["meta_rewarding-it2-pairs"]["cmd"]
    assert "runs/meta_rewarding/it2/judge_pairs.jsonl" in stages["meta_rewarding-it2-pairs"]["deps"]
    assert "--judge-pairs" not in stages["meta_rewarding-it3-pairs"]["cmd"]
    assert "--model runs/meta_rewarding/it1/model" in stages["meta_rewarding-it2-metajudge"]["cmd"]
    assert params["meta_rewarding"]["it3"]["pairs"]["judge_pairs"] is False


def test_stage_names_with_an_underscore_belong_to_their_run():
    # judge_eval's nodes must be replaced when their run is recompiled, and be listed under it by status
    assert compiler._belongs_to("ste-it1-judge_eval", "ste") and not compiler._belongs_to("ste-it1-judge_eval", "other")
    assert compiler.STAGE_RE.match("my-run-it12-judge_eval").group("run", "k", "stage") == ("my-run", "12", "judge_eval")
