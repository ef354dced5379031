"""The package ships whole: the built wheel, installed into a fresh virtual environment with no source tree
on its path, runs `selfimprove init` and a short run of one loop of each family in a folder outside the
repository.

The fresh environment reaches the dependencies (torch, TRL, DVC, ...) of the test's own environment
through a path file, so that nothing is downloaded; a path file adds that folder to sys.path without
reading the path files inside it, so the editable install of this checkout stays invisible.
Marked `wheel` (minutes; CI runs it as a step of its own): pytest -m wheel tests/test_wheel.py
"""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.wheel
ROOT = Path(__file__).resolve().parent.parent
# (loop, family, overrides that make it a short run: one iteration, a few prompts, a short bootstrap)
TINY = ["--set", "iterations=1", "--set", "data.prompts_size=8", "--set", "data.eval_size=8",
        "--set", "bootstrap.steps=20", "--set", "bootstrap.batch_size=8"]
FAMILIES = [("scpo", "vote", []),
            ("self_rewarding", "judge", ["--set", "evaluate.judge_size=4", "--set", "evaluate.win_rate_size=0"]),
            ("divpo", "reward", []),
            ("system2_distillation", "sft", []),
            ("self_taught_evaluator", "pairwise", ["--set", "judge_eval.size=8"]),
            ("adaptive_decoding", "decoding", ["--set", "decoding.k=2", "--set", "lpo.epochs=1"])]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, as `pip wheel .` builds it."""
    dist = tmp_path_factory.mktemp("dist")
    isolation = ["--no-build-isolation"] if _has("setuptools") else []  # else pip fetches setuptools itself
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(dist),
                            str(ROOT)], capture_output=True, text=True, cwd=dist)
    assert build.returncode == 0, build.stderr[-2000:]
    return next(dist.glob("selfimprove-*.whl"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel) -> Path:
    """bin/ of a fresh venv with the wheel installed and this environment's dependencies visible."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=_clean_env()).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], capture_output=True,
                             text=True, env=_clean_env())
    assert install.returncode == 0, install.stderr[-2000:]
    return root / "bin"


def _clean_env() -> dict:
    """This environment without what would put a source tree on the fresh venv's path."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _has(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def _run(bin_dir: Path, cwd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = _clean_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / "selfimprove"), *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_the_wheel_carries_every_module_prompt_loop_and_shipped_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    source = ROOT / "selfimprove"
    for prompt in (source / "shipped" / "prompts").rglob("*.txt"):
        assert f"selfimprove/{prompt.relative_to(source)}" in names
    for loop in (ROOT / "loops").glob("*.yaml"):
        assert f"selfimprove/shipped/loops/{loop.name}" in names
    for part in (source / "shipped" / "report").iterdir():  # the HTML report's template, style and script
        assert f"selfimprove/shipped/report/{part.name}" in names
    from selfimprove.loop.shipped import names as loop_names, shipped

    for name in loop_names():  # every file a loop names ships, or a command the loop's header gives makes it
        loop = shipped(name)
        for path in loop.files():
            assert f"selfimprove/shipped/{path}" in names or loop.prepare_commands(), (name, path)
    modules = {p.relative_to(source.parent).as_posix() for p in source.rglob("*.py") if "shipped" not in p.parts}
    assert modules <= names


def test_the_installed_package_is_the_wheel_not_this_checkout(installed, tmp_path):
    found = subprocess.run([str(installed / "python"), "-c", "import selfimprove; print(selfimprove.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True, env=_clean_env()).stdout
    assert str(installed.parent) in found and str(ROOT) not in found
    listing = _run(installed, tmp_path, "loops")
    assert listing.returncode == 0 and "scpo" in listing.stdout and "self_taught_evaluator" in listing.stdout


@pytest.mark.parametrize("loop, family, extra", FAMILIES, ids=[f for _, f, _ in FAMILIES])
def test_init_and_a_short_run_of_each_family(installed, tmp_path, loop, family, extra):
    project = tmp_path / "project"
    made = _run(installed, tmp_path, "init", loop, str(project))
    assert made.returncode == 0, made.stderr
    assert (project / f"{loop}.yaml").is_file() and (project / ".git").is_dir() and (project / ".dvc").is_dir()
    ran = _run(installed, project, "run", f"{loop}.yaml", *TINY, *extra)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-3000:]
    run = yaml.safe_load((project / f"{loop}.yaml").read_text())["name"]
    assert (project / "runs" / run / "metrics.json").is_file()
    shown = _run(installed, project, "metrics", run, "--json")
    assert shown.returncode == 0 and set(json.loads(shown.stdout)) >= {"0", "1"}, shown.stdout[-500:]
    ignored = subprocess.run(["git", "check-ignore", "-q", ".dvc/cache"], cwd=project)
    assert ignored.returncode == 0  # the models never go into git
