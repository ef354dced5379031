"""A stage's code fingerprint covers only the code that determines its outputs.

- For every shipped loop: no stage's fingerprint holds another stage's module, and a loop without a
  judge, a head or the OpenAI backend holds none of their code.
- Measured by DVC on the default loop: a real code change (not a comment) to a module that no stage
  of loops/scpo.yaml runs (the judge, the OpenAI client, the temperature head, the judging task, ...)
  leaves every stage up to date; the same change to the vote stage re-runs exactly the vote stages.
"""

from pathlib import Path

import pytest

from selfimprove.core import registry
from selfimprove.loop.loopfile import load_loop
from selfimprove.pipeline import compiler
from selfimprove.pipeline.fingerprint import imported_modules
from test_cache import PACKAGE, _changed, _compile, _copy_package, committed_with_stand_ins

ROOT = Path(__file__).resolve().parent.parent
LOOPS = sorted((ROOT / "loops").glob("*.yaml"))
STAGE_MODULES = {registry.module_of("stage", name) for name in registry.STAGES}
# Code that only some loops run, with the loops' trait that makes them run it.
JUDGE_CODE = {"selfimprove.stages.judge", "selfimprove.scoring.judge_scores", "selfimprove.scoring.judge_metrics"}
OPENAI_CODE = {"selfimprove.backends.openai", "selfimprove.backends.openai_client"}
HEAD_CODE = {"selfimprove.models.temperature_head"}
PAIRWISE_CODE = {"selfimprove.scoring.pairwise", "selfimprove.tasks.arith_evaluator"}
RAY_TRAIN_CODE = {"selfimprove.models.ray_launch"}
# The warm engine is the runner's (engine: warm): no stage's outputs depend on it, whatever the loop.
ENGINE_CODE = {"selfimprove.backends.warm", "selfimprove.core.warm_link", "selfimprove.pipeline.engine_broker",
               "selfimprove.pipeline.engine_server", "selfimprove.models.lora_stack"}


def _stage_code(loop_file: Path) -> dict[str, set[str]]:
    """Every node of the compiled loop -> the package modules its code fingerprints cover."""
    document, _ = compiler.compile_loop(load_loop(loop_file), ROOT)
    covered = {}
    for name, node in document["stages"].items():
        units = [key.removeprefix("code.") for key in node.get("params", []) if key.startswith("code.")]
        modules = set()
        for unit in units:
            module = "selfimprove." + unit.replace("-", ".")
            modules |= imported_modules(module) if not unit.endswith("-py") and not unit.startswith("prompts") else set()
        covered[name] = modules
    return covered


@pytest.mark.parametrize("loop_file", LOOPS, ids=[p.stem for p in LOOPS])
def test_no_stage_fingerprints_another_stage(loop_file):
    for name, modules in _stage_code(loop_file).items():
        own = {m for m in modules & STAGE_MODULES if name.endswith("-" + m.rsplit(".", 1)[1])}
        assert not (modules & STAGE_MODULES) - own, f"{name} fingerprints {sorted((modules & STAGE_MODULES) - own)}"


@pytest.mark.parametrize("loop_file", LOOPS, ids=[p.stem for p in LOOPS])
def test_a_loop_fingerprints_the_optional_code_it_runs_and_no_other(loop_file):
    code = _stage_code(loop_file)
    covered = set().union(*code.values())
    runs = {name.rsplit("-", 1)[1] for name in code}
    loop = load_loop(loop_file)
    traits = {"judge": (bool(runs & {"judge", "metajudge"}), JUDGE_CODE),
              "head": ("head" in runs, HEAD_CODE),
              "openai": (loop.backend == "openai", OPENAI_CODE),
              "pairwise": (bool(runs & {"perturb", "pairjudge", "judge_eval", "bsm"}), PAIRWISE_CODE),
              "ray_train": (any(s["train"].get("launcher") == "ray" for s in loop.per_iteration.values()),
                            RAY_TRAIN_CODE),
              "engine": (False, ENGINE_CODE)}
    for trait, (runs_it, modules) in traits.items():
        if not runs_it:
            assert not covered & modules, f"{loop_file.name} has no {trait} but fingerprints {sorted(covered & modules)}"
    if "self_rewarding" in loop_file.name:  # the judge's code counts where the loop judges
        assert JUDGE_CODE <= covered
    if "adaptive_decoding" in loop_file.name:  # a head's decoding counts where a stage reads a head
        assert HEAD_CODE <= covered


def test_the_ray_launcher_counts_in_the_train_stage_only_where_the_loop_uses_it(monkeypatch):
    from selfimprove.stages import train

    monkeypatch.setattr(train, "_module_installed", lambda name: True)  # compiled where Ray Train may be absent
    loop_file = ROOT / "loops/scpo.yaml"
    plain = _stage_code(loop_file)
    document, _ = compiler.compile_loop(load_loop(loop_file, ["train.launcher=ray"]), ROOT)
    on_ray = {name for name, node in document["stages"].items() if "code.models-ray_launch" in node.get("params", [])}
    assert on_ray == {f"scpo-it{k}-train" for k in (1, 2, 3)}
    assert not any(RAY_TRAIN_CODE & modules for modules in plain.values())


@pytest.fixture(scope="module")
def scpo_project(tmp_path_factory):
    """loops/scpo.yaml compiled in a project with every stage committed (stand-in outputs)."""
    root = tmp_path_factory.mktemp("scpo")
    (root / "loop.yaml").write_text((ROOT / "loops/scpo.yaml").read_text())
    return committed_with_stand_ins(root)


def _edited_package(tmp_path: Path, module: str) -> Path:
    """A copy of the package with a real code change to one module: a new function."""
    parent = _copy_package(tmp_path)
    path = parent / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + "\n\ndef _edited(value):\n    return value + 1\n")
    return parent


@pytest.mark.parametrize("module", ["selfimprove.stages.judge", "selfimprove.backends.openai_client",
                                    "selfimprove.models.temperature_head", "selfimprove.tasks.arith_evaluator",
                                    "selfimprove.scoring.judging", "selfimprove.scoring.judge_metrics",
                                    "selfimprove.scoring.pairwise", "selfimprove.stages.system2",
                                    "selfimprove.models.ray_launch", "selfimprove.backends.warm",
                                    "selfimprove.core.warm_link"])
def test_editing_code_the_default_loop_does_not_run_reruns_nothing_of_it(scpo_project, tmp_path, module):
    _compile(scpo_project, _edited_package(tmp_path, module))
    try:
        assert _changed(scpo_project) == set()
    finally:
        _compile(scpo_project, PACKAGE.parent)


def test_editing_the_vote_stage_reruns_the_vote_stages(scpo_project, tmp_path):
    _compile(scpo_project, _edited_package(tmp_path, "selfimprove.stages.vote"))
    try:
        assert _changed(scpo_project) == {f"scpo-it{k}-vote" for k in (1, 2, 3)}
    finally:
        _compile(scpo_project, PACKAGE.parent)
