"""A stage that fails, for any reason, ends the run in one line: the stage, the cause in words and the
log's path; the traceback goes to the log (runs/RUN/repro.log), and to the terminal only with
SELFIMPROVE_DEBUG=1. Every stage kind is made to fail through DVC (a fault injector, tests/stage_faults,
raises at the start of its main); a user's reward function that raises fails a real run; a hub id that
cannot be downloaded, a file that is not UTF-8 or not JSON, a programming error and DVC's own failures
are each one line too."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selfimprove.core.errors import UserError, one_line
from selfimprove.core.registry import BUILTIN_MODELS, STAGES, module_of, resolve
from selfimprove.pipeline import runner
from selfimprove.scoring import rewards
from selfimprove.stages import _io

FAULTS = Path(__file__).resolve().parent / "stage_faults"
# Every stage kind, and the builders of builtin models: name -> the module DVC runs.
KINDS = {name: module_of("stage", name) for name in STAGES} | {
    module.rsplit(".", 1)[-1]: module for module in {resolve("builtin model", name).builder for name in BUILTIN_MODELS}}


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# --- every stage kind, through DVC ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def faulty_project(tmp_path_factory) -> Path:
    """A DVC project with one stage per kind, each the stage's module run as a compiled pipeline runs it."""
    from selfimprove.pipeline.workspace import ensure_dvc

    project = tmp_path_factory.mktemp("faults")
    ensure_dvc(project)
    stages = {f"f-{kind}": {"cmd": f"python -m {module} --params params.yaml --run f --iteration 1"}
              for kind, module in KINDS.items()}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    return project


def failed_stage(project: Path, name: str, log: Path) -> tuple[str, str]:
    """(what the terminal shows, the one line) when `dvc repro name` fails under `selfimprove run`: what
    the runner prints, then the `error:` line the command ends with."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200)
    repro = runner.Repro(project, [name], log, log.parent / ".progress.json")
    code = repro.wait()
    assert code != 0, log.read_text()
    line = runner.failure_line(repro, code, log, "selfimprove run loop.yaml", console)
    return console.file.getvalue() + f"error: {line}\n", line


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_stage_of_each_kind_that_raises_ends_the_run_in_one_line(faulty_project, kind, monkeypatch):
    module = KINDS[kind]
    monkeypatch.setenv("SELFIMPROVE_FAULT", module)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("SELFIMPROVE_DEBUG", raising=False)
    log = faulty_project / "runs" / kind / "repro.log"
    terminal, line = failed_stage(faulty_project, f"f-{kind}", log)
    assert "Traceback" not in terminal and error_lines(terminal) == [f"error: {line}"], terminal
    assert line.startswith(f"f-{kind} failed: RuntimeError: injected fault in {module} (at ")
    assert f"(full log: {log})" in line and "run `selfimprove run loop.yaml` again" in line
    written = log.read_text()
    assert "Traceback (most recent call last)" in written and f"RuntimeError: injected fault in {module}" in written


def test_with_selfimprove_debug_the_traceback_is_on_the_terminal_too(faulty_project, monkeypatch):
    monkeypatch.setenv("SELFIMPROVE_FAULT", KINDS["vote"])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("SELFIMPROVE_DEBUG", "1")
    terminal, line = failed_stage(faulty_project, "f-vote", faulty_project / "runs" / "debug" / "repro.log")
    assert "Traceback (most recent call last)" in terminal and "RuntimeError: injected fault" in terminal
    assert error_lines(terminal) == [f"error: {line}"]  # the stage's own `error:` line is not repeated


# --- a user's reward function, through `selfimprove run` ------------------------------------------------

REWARD_LOOP = """\
name: t
model: model
data: {prompts: builtin:arith/train, eval: builtin:arith/test, prompts_size: 4, eval_size: 4}
iterations: 1
pipeline: [generate, reward, pairs, train, evaluate]
stages:
  generate: {n: 2, max_new_tokens: 4}
  reward: {source: "myreward:score"}
  pairs: {rule: best_vs_worst}
  evaluate: {k: 1, max_new_tokens: 4}
"""
RAISING_REWARD = "def score(question, response, gold):\n    raise ValueError(f'no score for {response!r}')\n"


def run(project: Path, **env) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items()
               if key not in ("SELFIMPROVE_DEBUG", "SELFIMPROVE_PROGRESS")}
    return subprocess.run([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml"], cwd=project,
                          env=dict(environ, COLUMNS="200", **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)


def test_a_reward_function_that_raises_is_named_with_the_sample_in_one_line(tmp_path):
    from selfimprove.stages.untrained import save_untrained

    save_untrained(tmp_path / "model", layers=1)
    (tmp_path / "loop.yaml").write_text(REWARD_LOOP)
    (tmp_path / "myreward.py").write_text(RAISING_REWARD)
    result = run(tmp_path)
    assert result.returncode == 2, result.stdout
    first = json.loads((tmp_path / "runs/t/it1/samples.jsonl").read_text().splitlines()[0])
    errors = error_lines(result.stdout)
    assert "Traceback" not in result.stdout and len(errors) == 1, result.stdout
    assert errors[0].startswith("error: t-it1-reward failed: reward myreward:score raised ValueError: no score for ")
    assert f"on the sample {first['question']!r} (response 0 of prompt {first['id']}); fix the function" in errors[0]
    assert f"(full log: {tmp_path / 'runs/t/repro.log'})" in errors[0] and "finished stages are kept" in errors[0]
    log = (tmp_path / "runs/t/repro.log").read_text()
    assert "Traceback (most recent call last)" in log and "myreward.py\", line 2, in score" in log

    result = run(tmp_path, SELFIMPROVE_DEBUG="1")  # the same failure: only the reward stage runs again
    assert result.returncode == 2, result.stdout
    assert "myreward.py\", line 2, in score" in result.stdout and error_lines(result.stdout) == errors


def test_a_reward_function_that_returns_no_number_is_named_with_the_sample(tmp_path, monkeypatch):
    (tmp_path / "myreward_text.py").write_text("def score(question, response, gold):\n    return 'high'\n"
                                               "def some(question, responses, gold):\n    return [1.0]\n"
                                               "some.per_prompt = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    items = [(7, "What is 2+3?", response, "5") for response in ("5", "6", "4")]
    with pytest.raises(UserError) as caught:
        rewards.rule_scores(rewards.rule({"source": "myreward_text:score"}), items)
    assert str(caught.value) == ("reward myreward_text:score returned 'high' for the response '5' on the sample "
                                 "'What is 2+3?' (response 0 of prompt 7); return a finite float, or None for no score")
    with pytest.raises(UserError, match=r"myreward_text:some is per_prompt and returned \[1.0\] for 3 responses on "
                                        r"the sample 'What is 2\+3\?' \(prompt 7\); return a list with one score"):
        rewards.rule_scores(rewards.rule({"source": "myreward_text:some"}), items)


# --- the hub out of reach -------------------------------------------------------------------------------

HUB_SCRIPT = """
import json
from selfimprove import models
from selfimprove.core.errors import UserError, stage_main
from selfimprove.scoring import rewards
from selfimprove.stages.head import hidden_size
from selfimprove.stages.reward import STAGE

found = {}
for name, load in [("model", lambda: models.load("someorg/not-cached")),
                   ("reward", lambda: rewards.model_scores(dict(STAGE.defaults(), source="model",
                                                                model="someorg/not-cached-rm"), ["q"], ["r"])),
                   ("head", lambda: hidden_size("someorg/not-cached-base", None))]:
    try:
        load()
    except UserError as error:
        found[name] = str(error)
print(json.dumps(found), flush=True)


def unwrapped():  # a download no loader of ours wraps (a backend's, the data loader's): the generic line
    from transformers import AutoConfig

    AutoConfig.from_pretrained("someorg/not-cached")


stage_main(unwrapped)
"""


def test_a_hub_id_that_cannot_be_downloaded_is_one_line_saying_how_to_use_a_local_copy(tmp_path):
    """Offline, without network: HF_HUB_OFFLINE=1 and an empty hub cache (and an endpoint nothing listens
    on, should offline mode be ignored)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    result = subprocess.run([sys.executable, "-c", HUB_SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    found = json.loads(result.stdout)
    for name, what, reference in [("model", "model", "someorg/not-cached"),
                                  ("head", "model", "someorg/not-cached-base"),
                                  ("reward", "reward.model", "someorg/not-cached-rm")]:
        assert found[name].startswith(f"{what} {reference}: not a local directory, and it could not be downloaded "
                                      "from the Hugging Face hub (HF_HUB_OFFLINE is set and it is not in the hub "
                                      "cache); use a local copy: its path in the loop file, or run "
                                      f"`hf download {reference}`"), found[name]
        assert "set HF_HUB_OFFLINE=1" in found[name] and "\n" not in found[name]
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [result.stderr.strip().splitlines()[-1]]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: a model or data set could not be downloaded from the Hugging Face hub (HF_HUB_OFFLINE is set")
    assert "Traceback" in result.stderr  # stage_main's stderr: the log, under `selfimprove run`


# --- the cause in words ---------------------------------------------------------------------------------

def cause(function) -> tuple[str, int]:
    try:
        function()
    except Exception as error:  # noqa: BLE001
        return one_line(error)
    raise AssertionError("no exception")


def test_a_file_that_is_not_utf8_or_not_json_is_named(tmp_path):
    latin = tmp_path / "prefs.jsonl"
    latin.write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    line, code = cause(lambda: _io.read_jsonl(latin))
    assert line.startswith(f"{latin}: not UTF-8 text (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xe9")
    assert f"iconv -f latin1 -t utf-8 {latin}" in line and code == 1
    broken = tmp_path / "samples.jsonl"
    broken.write_text('{"id": 0}\n{"id": 1,\n')
    line, _ = cause(lambda: _io.read_jsonl(broken))
    assert line.startswith(f"{broken}: the line '{{\"id\": 1,' is not valid JSON (JSONDecodeError: ")


def test_a_programming_error_in_selfimprove_says_it_is_a_bug_and_where(tmp_path):
    (tmp_path / "params.yaml").write_text("run: {it1: {}}\n")
    line, code = cause(lambda: _io.read_section(str(tmp_path / "params.yaml"), "run.it1.vote"))
    assert line.startswith("internal error, a bug in selfimprove unless an input file is malformed: KeyError: 'vote' "
                           "(at selfimprove/stages/_io.py:") and "report it with the traceback" in line and code == 1
    line, _ = cause(lambda: {}["vote"])  # raised outside selfimprove (here: a user's code): no bug claimed
    assert line.startswith("KeyError: 'vote' (at ") and "bug" not in line


def test_the_runner_names_dvc_s_own_error_a_killed_stage_and_a_crash_before_the_stage_started():
    repro = runner.Repro.__new__(runner.Repro)
    command = "python -m selfimprove.stages.train --params params.yaml --run f --iteration 1"
    repro.tail = ["Running stage 'f-it1-train':", f"> {command}",
                  f"ERROR: failed to reproduce 'f-it1-train': failed to run: {command}, exited with -9"]
    reason, explained = repro.failure(255)
    assert explained and reason.startswith("the stage was killed by SIGKILL (often the out-of-memory killer")
    repro.tail[-1] = f"ERROR: failed to reproduce 'f-it1-train': failed to run: {command}, exited with 3"
    assert repro.failure(255) == ("the stage exited with status 3 without saying why", False)
    repro.tail[-1] = "ERROR: failed to reproduce 'f-it1-train': output 'runs/f/it1/model' does not exist"
    assert repro.failure(255) == ("DVC: output 'runs/f/it1/model' does not exist", True)
    repro.tail[2:] = ["Traceback (most recent call last):", '  File "<frozen runpy>", line 198, in _run_module_as_main',
                      "ModuleNotFoundError: No module named 'trl'",
                      f"ERROR: failed to reproduce 'f-it1-train': failed to run: {command}, exited with 1"]
    assert repro.failure(255) == ("ModuleNotFoundError: No module named 'trl' (before the stage could start; the "
                                  "traceback is in the log)", True)


def test_the_stage_s_error_line_is_found_in_the_log_past_the_tail(tmp_path):
    """A launcher's report after the stage's line (accelerate's, for a multi-process train) is longer than
    the 30 lines the runner keeps: the cause is read from the stage's part of the log."""
    from rich.console import Console

    log = tmp_path / "repro.log"
    log.write_text("Running stage 'f-it1-generate':\nerror: an earlier run's failure\n"
                   "Running stage 'f-it1-train':\n> accelerate launch ...\nTraceback (most recent call last):\n"
                   "ValueError: bad batch\nerror: ValueError: bad batch (at selfimprove/stages/train.py:1 in main)\n"
                   + "".join(f"  launcher report line {i}\n" for i in range(40))
                   + "subprocess.CalledProcessError: Command '[...]' returned non-zero exit status 1.\n")
    repro = runner.Repro.__new__(runner.Repro)
    repro.current, repro.tail = "f-it1-train", log.read_text().splitlines()[-30:]
    line = runner.failure_line(repro, 1, log, "selfimprove run loop.yaml", Console(file=io.StringIO()))
    assert line.startswith("f-it1-train failed: ValueError: bad batch (at selfimprove/stages/train.py:1 in main) "
                           f"(full log: {log}); fix the cause and run `selfimprove run loop.yaml` again")
