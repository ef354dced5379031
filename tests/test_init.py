"""`selfimprove loops` and `selfimprove init`, from this checkout (the wheel tier runs them from the wheel)."""

import subprocess

from click.testing import CliRunner

from selfimprove.cli import main
from selfimprove.loop.shipped import names


def test_loops_lists_every_shipped_loop_with_what_it_needs():
    result = CliRunner().invoke(main, ["loops"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert len(names()) == 15 and all(name in result.output for name in names())
    assert "gold answers" in result.output and "a judge (the policy)" in result.output


def test_init_writes_the_loop_with_its_commands_for_the_project_and_sets_up_git_and_dvc(tmp_path):
    project = tmp_path / "mine"
    result = CliRunner().invoke(main, ["init", "scpo", str(project)])
    assert result.exit_code == 0, result.output
    text = (project / "scpo.yaml").read_text()
    assert "selfimprove run scpo.yaml" in text and "loops/scpo.yaml" not in text
    assert (project / ".git").is_dir() and (project / ".dvc").is_dir()
    assert subprocess.run(["git", "check-ignore", "-q", ".dvc/cache"], cwd=project).returncode == 0
    assert result.output.strip().endswith(f"next: cd {project} && selfimprove run scpo.yaml")


def test_init_copies_the_files_a_loop_names_and_says_what_another_step_makes(tmp_path):
    evaluator = CliRunner().invoke(main, ["init", "self_taught_evaluator", str(tmp_path / "ste")])
    assert evaluator.exit_code == 0, evaluator.output
    assert (tmp_path / "ste/examples/self_taught_evaluator/pairs_test.jsonl").stat().st_size > 1000
    reward = CliRunner().invoke(main, ["init", "natural_reasoning_rm", str(tmp_path / "rm")])
    assert (tmp_path / "rm/examples/natural_reasoning/train_reward_model.py").is_file()
    assert ("runs/reward-models/tiny-arith-rm does not exist yet: make it first with "
            "`python examples/natural_reasoning/train_reward_model.py`") in reward.output


def test_init_refuses_an_unknown_loop_and_an_existing_file_in_one_line(tmp_path):
    unknown = CliRunner().invoke(main, ["init", "scpoo", str(tmp_path)])
    assert unknown.exit_code == 2 and "did you mean 'scpo'?" in unknown.output
    assert CliRunner().invoke(main, ["init", "scpo", str(tmp_path)]).exit_code == 0
    again = CliRunner().invoke(main, ["init", "scpo", str(tmp_path)])
    assert again.exit_code == 2 and "exists; pass --force" in again.output
    assert CliRunner().invoke(main, ["init", "scpo", str(tmp_path), "--force"]).exit_code == 0
