"""The cache is exact, measured by DVC itself: a compiled loop's stages are committed with stand-in
outputs (no model runs), then `dvc status` says which stages an edit would re-run.

- editing a judge template re-runs exactly the stages that read it;
- a comment, docstring or formatting change in any module of the package re-runs nothing;
- a setting added to one stage re-runs only that stage; a change to what a stage computes re-runs it;
- the same project compiled from a second install of the package at another path re-runs nothing.
The package variants are copies of selfimprove/ imported from another directory, as another venv would.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import selfimprove

PACKAGE = Path(selfimprove.__file__).resolve().parent
LOOP = """\
name: t
model: builtin:tiny-arith-judge
data: {prompts: builtin:arith/train, eval: builtin:arith/test}
iterations: 2
pipeline: [generate, judge, metajudge, pairs, train, evaluate]
stages:
  judge: {template: my_judge.txt}
  pairs: {rule: best_vs_worst}
  evaluate: {judge_size: 10}
schedule:
  2: {pipeline: [generate, judge, pairs, train, evaluate]}
"""


def _compile(project: Path, package_parent: Path) -> None:
    """`selfimprove compile loop.yaml` with the package imported from package_parent."""
    code = (f"import sys; sys.path.insert(0, {str(package_parent)!r}); import selfimprove; "
            f"assert selfimprove.__file__.startswith({str(package_parent)!r}), selfimprove.__file__; "
            "from selfimprove.cli import main; main(['compile', 'loop.yaml'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _dvc(project: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True,
                            env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def _changed(project: Path) -> set[str]:
    return set(json.loads(_dvc(project, "status", "--json") or "{}"))


def _copy_package(target: Path) -> Path:
    shutil.copytree(PACKAGE, target / "selfimprove", ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A compiled project whose every stage is committed (stand-in outputs): dvc status is clean."""
    root = tmp_path_factory.mktemp("project")
    (root / "loop.yaml").write_text(LOOP)
    (root / "my_judge.txt").write_text("{question}{response} judge:")
    return committed_with_stand_ins(root)


def committed_with_stand_ins(root: Path) -> Path:
    """root's loop.yaml compiled, every output a stand-in (a directory with a config.json for a model,
    else a small file) and committed to DVC: dvc status is clean, and only an edit can change that."""
    from selfimprove.pipeline.workspace import ensure_dvc

    ensure_dvc(root)
    _compile(root, PACKAGE.parent)
    for node in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values():
        outs = [o if isinstance(o, str) else next(iter(o)) for o in node.get("outs", [])]  # {path: {cache: false}}
        for out in outs + [next(iter(m)) for m in node.get("metrics", []) + node.get("plots", [])]:
            path = root / out
            if out.endswith(("model", "train_curves")) or out.startswith("runs/builtin/"):
                path.mkdir(parents=True, exist_ok=True)
                (path / "config.json").write_text("{}")
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}\n")
    _dvc(root, "commit", "-f", "-q")
    assert _changed(root) == set()
    return root


def _variant(tmp_path: Path, edit) -> Path:
    """A second install of the package, edited by edit(package_dir)."""
    parent = _copy_package(tmp_path / "other-venv" / "site-packages")
    edit(parent / "selfimprove")
    return parent


def _restore(project: Path) -> None:
    _compile(project, PACKAGE.parent)
    assert _changed(project) == set()


def test_a_second_install_at_another_path_reruns_nothing(project, tmp_path):
    before = (project / "dvc.yaml").read_text(), (project / "params.yaml").read_text()
    _compile(project, _variant(tmp_path, lambda package: None))
    assert ((project / "dvc.yaml").read_text(), (project / "params.yaml").read_text()) == before
    assert str(tmp_path) not in before[0] and str(PACKAGE) not in before[0]  # no path of the machine
    assert _changed(project) == set()


def _comment_everything(package: Path) -> None:
    """Comments, docstrings, blank lines and line breaks inside brackets added to every module."""
    for path in package.rglob("*.py"):
        text = path.read_text()
        text = text.replace('"""', '"""Reworded in a patch release. ', 1)  # the module's docstring
        text = text.replace("\ndef ", "\n# a comment a release added\n\ndef ")
        text = text.replace("(settings: dict", "(\n        settings: dict")
        path.write_text("# header comment\n" + text + "\n# trailing comment\n")


def test_comments_docstrings_and_formatting_anywhere_rerun_nothing(project, tmp_path):
    variant = _variant(tmp_path, _comment_everything)
    assert (variant / "selfimprove/stages/judge.py").read_text() != (PACKAGE / "stages/judge.py").read_text()
    _compile(project, variant)
    assert _changed(project) == set()


def test_a_setting_added_to_one_stage_reruns_only_that_stage(project, tmp_path):
    def add_setting(package: Path) -> None:
        path = package / "stages" / "metajudge.py"
        path.write_text(path.read_text().replace(
            'SETTINGS = {\n', 'SETTINGS = {\n    "new_knob": Setting(int, 3, "a setting a release added"),\n', 1))

    _compile(project, _variant(tmp_path, add_setting))
    # and the run's report, which shows every setting of the run (it tracks the run's params section)
    assert _changed(project) == {"t-it1-metajudge", "t-report"}
    _restore(project)


def test_a_change_to_what_a_stage_computes_reruns_it_and_the_stages_that_run_its_code(project, tmp_path):
    def change_rule(package: Path) -> None:  # the length-band rule's band, computed differently
        path = package / "scoring" / "rules" / "scored.py"
        path.write_text(path.read_text().replace("(1 - rho) * high + rho * low", "(1 - rho) * high + rho * low + 0"))

    _compile(project, _variant(tmp_path, change_rule))
    assert _changed(project) == {"t-it1-pairs", "t-it2-pairs"}  # DVC re-runs what follows once their output changes
    _restore(project)


def test_editing_a_judge_template_reruns_exactly_the_stages_that_read_it(project):
    template = project / "my_judge.txt"
    original = template.read_text()
    template.write_text(original + " Score:")
    try:
        # the judges, the meta-judge (it reads the judge's template for its judge pairs) and the evaluations
        # that measure the judge's agreement (evaluate.judge_size)
        assert _changed(project) == {"t-it1-judge", "t-it2-judge", "t-it1-metajudge",
                                     "t-it0-evaluate", "t-it1-evaluate", "t-it2-evaluate"}
    finally:
        template.write_text(original)
    assert _changed(project) == set()
