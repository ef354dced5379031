"""A project colleagues can share: DVC's cache never enters git (even for a project begun outside git),
`status` tells a clone's "not checked out" apart from "stale", and push/pull through a DVC remote (a
local folder here) give a clone every stage done, with nothing to rerun."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from selfimprove.cli import main

ROOT = Path(__file__).resolve().parent.parent
GIT_ENV = dict(os.environ, GIT_AUTHOR_NAME="a", GIT_AUTHOR_EMAIL="a@example.com", GIT_COMMITTER_NAME="a",
               GIT_COMMITTER_EMAIL="a@example.com")
# The default loop, as small as it goes: one iteration, 8 prompts, 8 held-out problems.
TINY = ["--set", "iterations=1", "--set", "data.prompts_size=8", "--set", "data.eval_size=8", "--set",
        "bootstrap.steps=20", "--set", "generate.n=2", "--set", "evaluate.k=2", "--set", "train.batch_size=2",
        "--set", "generate.max_new_tokens=16", "--set", "evaluate.max_new_tokens=16"]


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, env=GIT_ENV, check=True, capture_output=True,
                          text=True).stdout


def selfimprove(project: Path, *args: str) -> str:
    env = dict(os.environ, COLUMNS="200")
    env.pop("SELFIMPROVE_PROGRESS", None)
    result = subprocess.run([sys.executable, "-c", "from selfimprove.cli import main; main()", *args], cwd=project,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_project_begun_outside_git_never_commits_the_cache(tmp_path, monkeypatch):
    if subprocess.run(["git", "rev-parse"], cwd=tmp_path, capture_output=True).returncode == 0:
        pytest.skip("the temporary folder is inside a git repository")
    (tmp_path / "loop.yaml").write_text((ROOT / "loops/scpo.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["compile", "loop.yaml"]).exit_code == 0
    assert "no_scm" in (tmp_path / ".dvc/config").read_text()  # DVC without git, as git is not there
    for scratch in (".dvc/cache/files/md5/ab/cdef", ".dvc/tmp/rwlock", ".dvc/site-cache/x", "runs/scpo/it0/x"):
        (tmp_path / scratch).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / scratch).write_text("a model")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    tracked = git(tmp_path, "ls-files").split()
    assert "dvc.yaml" in tracked and ".dvc/config" in tracked
    assert not [path for path in tracked if path.startswith((".dvc/cache", ".dvc/tmp", ".dvc/site-cache", "runs/"))]
    # The next compile (or run) switches DVC to git.
    assert CliRunner().invoke(main, ["compile", "loop.yaml"]).exit_code == 0
    assert "no_scm" not in (tmp_path / ".dvc/config").read_text()


def test_a_project_of_an_older_version_gets_its_dvc_gitignore(tmp_path, monkeypatch):
    (tmp_path / "loop.yaml").write_text((ROOT / "loops/scpo.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["compile", "loop.yaml"]).exit_code == 0
    (tmp_path / ".dvc/.gitignore").unlink()  # what `dvc init --no-scm` left before
    assert CliRunner().invoke(main, ["compile", "loop.yaml"]).exit_code == 0
    assert {"/cache", "/tmp", "/site-cache"} <= set((tmp_path / ".dvc/.gitignore").read_text().splitlines())


def test_missing_outputs_are_not_checked_out_and_changed_inputs_are_stale():
    from selfimprove.pipeline.status import _changed_state

    produced = {"runs/builtin/tiny-arith", "runs/s/it1/samples.jsonl", "runs/s/it1/model"}
    clone = [{"changed deps": {"runs/builtin/tiny-arith": "deleted"}},
             {"changed outs": {"runs/s/it1/samples.jsonl": "not in cache"}}]
    assert _changed_state(clone, produced) == "not checked out"
    assert _changed_state([{"changed deps": {"prompts.jsonl": "deleted"}}], produced) == "stale"  # the user's file
    assert _changed_state([{"changed deps": {"runs/s/it1/model": "modified"}}], produced) == "stale"
    assert _changed_state([{"changed deps": {"params.yaml": {"s.it1.generate.n": "modified"}}}], produced) == "stale"
    assert _changed_state(["changed command"], produced) == "stale"


def _states(project: Path) -> set[str]:
    from selfimprove.pipeline.status import stage_status

    return {row["state"] for row in stage_status(project)}


@pytest.mark.slow
def test_push_commit_clone_pull_gives_every_stage_done(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    git(a, "init", "-q")
    (a / "loop.yaml").write_text((ROOT / "loops/scpo.yaml").read_text())
    selfimprove(a, "run", "loop.yaml", *TINY)
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(tmp_path / "store")], cwd=a,
                   check=True)
    pushed = selfimprove(a, "push")
    assert "dvc push:" in pushed and "git: staged" in pushed
    git(a, "add", "loop.yaml", ".dvc/config")
    git(a, "commit", "-q", "-m", "a tiny scpo run")
    tracked = git(a, "ls-files").split()
    assert not [p for p in tracked if p.startswith((".dvc/cache", "runs/builtin", "runs/scpo/it1/model"))]
    assert "runs/scpo/it1/metrics.json" in tracked  # a `cache: false` output: git carries it

    git(tmp_path, "clone", "-q", str(a), str(b))
    shown = selfimprove(b, "status")
    assert "not checked out" in shown and "stale" not in shown and "pull" in shown
    assert _states(b) <= {"not checked out", "done"}
    assert "stages: " in selfimprove(b, "pull")
    assert _states(b) == {"done"}
    assert "scpo: 0 stage(s) ran" in selfimprove(b, "run", "loop.yaml", *TINY)
    assert "scpo@1" in selfimprove(b, "diff", "scpo@0", "scpo@1")
    selfimprove(b, "plot", "scpo", "-o", "curves.png")
    assert (b / "curves.png").stat().st_size > 0
