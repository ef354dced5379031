"""`selfimprove rm RUN`: a run's stages, params and plots leave the project; the other runs' stay valid for
DVC; refused under a running loop; --outputs deletes runs/RUN/ alone, after saying so."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from selfimprove.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Two compiled runs of the default loop, alpha (2 iterations) and beta (1), sharing the builtin model."""
    text = (ROOT / "loops/scpo.yaml").read_text()
    monkeypatch.chdir(tmp_path)
    for name, iterations in (("alpha", 2), ("beta", 1)):
        (tmp_path / f"{name}.yaml").write_text(text.replace("name: scpo", f"name: {name}"))
        result = CliRunner().invoke(main, ["compile", f"{name}.yaml", "--set", f"iterations={iterations}"])
        assert result.exit_code == 0, result.output
    for run in ("alpha", "beta"):
        (tmp_path / f"runs/{run}/it0").mkdir(parents=True)
        (tmp_path / f"runs/{run}/it0/metrics.json").write_text("{}")
    return tmp_path


def _compiled(project: Path) -> tuple[dict, dict]:
    return (yaml.safe_load((project / "dvc.yaml").read_text()), yaml.safe_load((project / "params.yaml").read_text()))


def _dvc_status(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=project, capture_output=True, text=True)


def test_rm_leaves_the_other_run_whole_and_valid_for_dvc(project):
    before, _ = _compiled(project)
    result = CliRunner().invoke(main, ["rm", "alpha"])
    assert result.exit_code == 0, result.output
    document, params = _compiled(project)
    assert not [name for name in document["stages"] if name.startswith("alpha-")]
    kept = {name: node for name, node in before["stages"].items() if not name.startswith("alpha-")}
    assert kept == document["stages"]
    assert "alpha" not in params and "beta" in params and "tiny-arith" in params["builtin"]
    used = {key.removeprefix("code.") for node in document["stages"].values() for key in node["params"]
            if key.startswith("code.")}
    assert set(params["code"]) == used  # no fingerprint only alpha's stages read
    assert not [path for entry in document.get("plots", []) for path in entry if path.startswith("runs/alpha/")]
    assert [path for entry in document.get("plots", []) for path in entry if path.startswith("runs/beta/")]
    status = _dvc_status(project)
    assert status.returncode == 0, status.stderr
    assert (project / "runs/alpha/it0/metrics.json").exists()  # outputs are kept without --outputs
    assert "outputs kept in runs/alpha/" in result.output


def test_rm_of_the_last_run_drops_the_bootstrap_and_its_params(project):
    for run in ("alpha", "beta"):
        assert CliRunner().invoke(main, ["rm", run]).exit_code == 0
    document, params = _compiled(project)
    assert document["stages"] == {} and "plots" not in document
    assert not params.get("code") and "builtin" not in params
    assert _dvc_status(project).returncode == 0


def test_rm_is_refused_while_a_run_holds_the_workspace(project):
    from selfimprove.pipeline.workspace import workspace_lock

    with workspace_lock(project, "selfimprove run alpha.yaml"):
        result = CliRunner().invoke(main, ["rm", "alpha"])
    assert result.exit_code == 2
    assert "busy: pid" in result.output and "selfimprove run alpha.yaml" in result.output
    assert "alpha" in _compiled(project)[1]


def test_unknown_run_gets_did_you_mean(project):
    result = CliRunner().invoke(main, ["rm", "alpah"])
    assert result.exit_code == 2
    assert "no run named 'alpah'" in result.output and "did you mean 'alpha'?" in result.output


def test_rm_outputs_asks_or_needs_yes_and_deletes_only_that_run(project):
    result = CliRunner().invoke(main, ["rm", "alpha", "--outputs"])  # no terminal to ask
    assert result.exit_code == 2 and "pass --yes" in result.output
    assert "will delete" in result.output and "runs/alpha" in result.output
    assert "alpha" in _compiled(project)[1] and (project / "runs/alpha").exists()  # nothing changed
    result = CliRunner().invoke(main, ["rm", "alpha", "--outputs", "--yes"])
    assert result.exit_code == 0, result.output
    assert "will delete" in result.output
    assert not (project / "runs/alpha").exists()
    assert (project / "runs/beta/it0/metrics.json").exists()
