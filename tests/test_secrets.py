"""No credential reaches a file the run writes. Credentials put where a user might put them are refused
before anything is written; the one legitimate place, the environment variable `api_key_env` names,
reaches the server in the Authorization header and no file of the project (params, dvc.yaml, dvc.lock,
logs, caches, outputs, metrics, DVC's own files)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-live-5f3c9d2e-secret"
LOOP = """\
name: s
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test, prompts_size: 4, eval_size: 4, digits: 2}
iterations: 1
bootstrap: {steps: 20, batch_size: 8, digits: 2, layers: 1}
backend: openai
openai: {endpoints: [%s], api_key_env: GEN_KEY}
stages:
  generate: {n: 2, max_new_tokens: 12}
  pairs: {min_votes: 0.0}
  train: {batch_size: 2, max_length: 48}
  evaluate: {k: 2, max_new_tokens: 12}
"""

MISPLACED = [  # (--set override, what the refusal says); each puts the key where it does not belong
    (f"openai.endpoints=http://user:{KEY}@127.0.0.1:1/v1", "a URL with a user or password in it"),
    (f"openai.endpoints=https://{KEY}@api.example.com/v1", "a URL with a user or password in it"),
    (f"openai.api_key_env={KEY}", "is the NAME of an environment variable"),
    (f"judge.endpoint=http://me:{KEY}@127.0.0.1:1/v1", "a URL with a user or password in it"),
]


def files_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def cli(tmp_path, *args, env=None):
    return subprocess.run([sys.executable, "-m", "selfimprove.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("override,refusal", MISPLACED, ids=["user:password", "token as user", "key as env name",
                                                           "judge endpoint"])
def test_a_credential_in_the_wrong_place_is_refused_and_never_echoed_or_written(tmp_path, override, refusal):
    (tmp_path / "loop.yaml").write_text(LOOP % "http://127.0.0.1:1/v1")
    result = cli(tmp_path, "compile", "loop.yaml", "--set", override)
    assert result.returncode == 2 and refusal in result.stderr
    assert KEY not in result.stdout + result.stderr and KEY not in files_text(tmp_path)
    assert not (tmp_path / "params.yaml").exists()


def test_a_whole_run_writes_the_key_nowhere(tmp_path, server_with):
    server = server_with([])
    (tmp_path / "loop.yaml").write_text(LOOP % server.url)
    result = cli(tmp_path, "run", "loop.yaml", env={"GEN_KEY": KEY})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert server.requests and all(r["auth"] == f"Bearer {KEY}" for r in server.requests)  # the key was used...
    assert (tmp_path / "runs/s/it1/metrics.json").exists() and (tmp_path / "dvc.lock").exists()
    assert KEY not in files_text(tmp_path) and KEY not in result.stdout + result.stderr  # ...and written nowhere
    assert "GEN_KEY" in (tmp_path / "params.yaml").read_text()  # only its name
