"""A corpus of bad loop files, each one defect in an otherwise valid file: every one is refused in one
line naming the file, the line and the key, within a second, through the CLI (no traceback, no
"internal error"). Add a case for every new kind of mistake found."""

import re
import subprocess
import sys
import time

import pytest

from selfimprove.core.errors import UserError
from selfimprove.loop.loopfile import load_loop

VALID = """\
name: t
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test}
iterations: 2
stages:
  train: {beta: 0.5, lr: 1.0e-4}
"""


def laughs(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# (name, file text or bytes, what the one line must say)
CORPUS = [
    ("alias expansion", VALID + laughs(), r"loop.yaml: its aliases expand to more than 100,000 values"),
    ("duplicate top-level key", VALID + "iterations: 5\n", r"loop.yaml:7: 'iterations' is given twice \(first at line 4\)"),
    ("duplicate stage key", VALID.replace("beta: 0.5,", "beta: 0.5, beta: 0.1,"),
     r"loop.yaml:6: 'beta' is given twice \(on this line\)"),
    ("not UTF-8", VALID.encode().replace(b"name: t", b"name: t\xff"), r"loop.yaml:1: byte 0xff is not UTF-8"),
    ("deep nesting", VALID + "description: " + "[" * 5000 + "]" * 5000 + "\n", r"loop.yaml:7: nested more than 50"),
    ("empty model", VALID.replace("builtin:tiny-arith", '""'), r"loop.yaml:2: model: is empty; name a builtin"),
    ("null model", VALID.replace("model: builtin:tiny-arith", "model:"), r"loop.yaml:2: model: is empty"),
    ("unknown builtin", VALID.replace("tiny-arith\n", "tiny-arithm\n"), r"loop.yaml:2: model: .*did you mean 'tiny-arith'"),
    ("schedule past the end", VALID + "schedule: {7: {train: {lr: 1.0e-5}}}\n",
     r"loop.yaml:7: schedule.7: the loop has 2 iterations"),
    ("infinite number", VALID.replace("beta: 0.5", "beta: .inf"), r"loop.yaml:6: stages.train.beta: .*finite"),
    ("not a number", VALID.replace("beta: 0.5", "beta: .nan"), r"loop.yaml:6: stages.train.beta: .*finite"),
    ("missing data file", VALID.replace("builtin:arith/train", "data/does-not-exist.jsonl"),
     r"loop.yaml:3: data.prompts: data/does-not-exist.jsonl: no such file"),
    ("credentials in a URL", VALID + "backend: openai\nopenai: {endpoints: ['http://user:secret@host:8000/v1']}\n",
     r"loop.yaml:8: openai.endpoints: a URL with a user or password in it"),
    ("run name", VALID.replace("name: t", "name: ../t"), r"loop.yaml:1: name: '../t' is not a run name"),
]


@pytest.mark.parametrize("name,text,expected", CORPUS, ids=[c[0] for c in CORPUS])
def test_each_bad_loop_file_is_one_line_with_file_line_and_key(tmp_path, name, text, expected):
    path = tmp_path / "loop.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    started = time.monotonic()
    with pytest.raises(UserError) as error:
        load_loop(path)
    assert time.monotonic() - started < 1.0
    assert any(re.search(expected, line) for line in str(error.value).splitlines()), str(error.value)
    assert "secret" not in str(error.value)  # a credential is never echoed back


def test_a_bom_and_crlf_line_ends_still_load(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID.replace("\n", "\r\n").encode())
    assert load_loop(path).iterations == 2


@pytest.mark.parametrize("override,expected", [
    ("train.beta=.inf", r"--set stages.train.beta: expected a finite number"),
    ("iterations", r"--set iterations: expected KEY=VALUE"),
    ("train.betta=0.1", r"--set stages.train.betta: .*did you mean 'beta'"),
    ("openai.api_key_env=sk-secret-123", r"--set openai.api_key_env: is the NAME"),
    ("train.beta=[[[[", r"--set train.beta=\[\[\[\[: not valid YAML"),
])
def test_set_values_are_checked_like_the_file_and_named_as_set(tmp_path, override, expected):
    path = tmp_path / "loop.yaml"
    path.write_text(VALID)
    with pytest.raises(UserError, match=expected):
        load_loop(path, [override])


def test_shortening_a_loop_with_set_keeps_its_later_schedule_entries(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text(VALID.replace("iterations: 2", "iterations: 3") + "schedule: {3: {train: {lr: 1.0e-5}}}\n")
    assert load_loop(path, ["iterations=2"]).iterations == 2


def test_the_cli_prints_the_line_and_no_traceback(tmp_path):
    (tmp_path / "loop.yaml").write_text(VALID + laughs())
    result = subprocess.run([sys.executable, "-m", "selfimprove.cli", "validate", "loop.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "aliases expand" in result.stderr and len(result.stderr) < 2000


# Data files of a user's own project: (file name, content, what the one line must say)
DATA_CORPUS = [
    ("train.jsonl", b'{"question": "1+1="}\n{"question": "2+2=",\n', r"train.jsonl:2: not valid JSON"),
    ("train.jsonl", b"", r"train.jsonl: the file is empty"),
    ("train.jsonl", b"\n  \n", r"train.jsonl: the file is empty"),
    ("train.jsonl", b'{"q": "1+1="}\n', r"train.jsonl:1: no field question \(it has q\); set data.question_field"),
    ("train.jsonl", b'{"question": "1+1="}\n{"question": "\xff"}\n', r"train.jsonl:2: byte 0xff is not UTF-8"),
    ("train.jsonl", b'{"question": ["1+1="]}\n', r"train.jsonl:1: question is list, expected text"),
    ("train.jsonl", b'["1+1="]\n', r"train.jsonl:1: expected a record"),
    ("train.json", b'[{"question": "1+1="}, {"question": ""}]', r"train.json: record 2: question is empty"),
    ("train.json", b'{"question": "1+1="', r"train.json:1: not valid JSON"),
    ("train.parquet", b"PAR1 not really", r"train.parquet: not a readable Parquet file"),
]


@pytest.mark.parametrize("name,content,expected", DATA_CORPUS, ids=[f"{c[0]}-{i}" for i, c in enumerate(DATA_CORPUS)])
def test_each_bad_data_file_is_one_line_at_validate_time(tmp_path, monkeypatch, name, content, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(content)
    (tmp_path / "loop.yaml").write_text(VALID.replace("builtin:arith/train", name))
    with pytest.raises(UserError) as error:
        load_loop(tmp_path / "loop.yaml")
    assert any(re.search(expected, line) for line in str(error.value).splitlines()), str(error.value)


def test_an_eval_file_needs_answers_and_good_files_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval.jsonl").write_text('{"question": "1+1=", "answer": 2}\n{"question": "2+2="}\n')
    (tmp_path / "train.jsonl").write_text('{"question": "1+1="}\r\n\r\n{"question": 12}\r\n')  # CRLF, a blank line
    (tmp_path / "loop.yaml").write_text(VALID.replace("builtin:arith/train", "train.jsonl")
                                        .replace("builtin:arith/test", "eval.jsonl"))
    with pytest.raises(UserError, match=r"eval.jsonl:2: no field answer"):
        load_loop(tmp_path / "loop.yaml")
    (tmp_path / "eval.jsonl").write_text('{"question": "1+1=", "answer": "#### 2"}\n')
    assert load_loop(tmp_path / "loop.yaml").data["prompts"] == "train.jsonl"


# --- What a loop points at, by class (issue 28): every setting that names something (Setting.reads) is
# read at validate by the reader of its kind. The walk below feeds every such setting of every stage each
# defect of its kind, through a shipped loop that runs the stage, so a new setting that names a file or a
# model is covered by its declaration alone.

import shutil
from pathlib import Path

from selfimprove.core.registry import FILE_KINDS, stages

ROOT = Path(__file__).resolve().parent.parent
LATIN1 = '{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'.encode("latin-1")

# kind -> [(defect, the file's name and bytes (None: no file), the value, what the one line must say)]
DEFECTS = {
    "pairs": [
        ("bad JSON line", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": \n', "p.jsonl", r"p.jsonl:2: not valid JSON"),
        ("JSON array", b'[{"prompt": "a", "chosen": "b", "rejected": "c"}]\n', "p.jsonl", r"p.jsonl:1: a JSON array, not JSON Lines"),
        ("null chosen", b'{"prompt": "a", "chosen": null, "rejected": "c"}\n', "p.jsonl", r"p.jsonl:1: chosen is null"),
        ("number", b'{"prompt": "a", "chosen": "b", "rejected": 7}\n', "p.jsonl", r"p.jsonl:1: rejected is int 7, not text"),
        ("wrong field", b'{"prompt": "a", "chosen_response": "b", "rejected": "c"}\n', "p.jsonl",
         r"p.jsonl:1: no field 'chosen'; it has 'chosen_response'"),
        ("Latin-1", LATIN1, "p.jsonl", r"p.jsonl:1: byte 0xe9 is not UTF-8"),
        ("chosen = rejected", b'{"prompt": "a", "chosen": "b", "rejected": "b"}\n', "p.jsonl", r"p.jsonl:1: chosen and rejected are the same"),
        ("empty", b"\n", "p.jsonl", r"p.jsonl: the file is empty"),
        ("outside the project", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n', "../elsewhere.jsonl",
         r"outside the project directory"),
    ],
    "examples": [
        ("bad JSON line", b'{"question": "1+1="}\n{oops}\n', "e.jsonl", r"e.jsonl:2: not valid JSON"),
        ("no question field", b'{"text": "1+1="}\n', "e.jsonl", r"e.jsonl:1: no question or prompt field"),
        ("null question", b'{"question": null}\n', "e.jsonl", r"e.jsonl:1: question is null"),
        ("Latin-1", '{"question": "caf\xe9"}\n'.encode("latin-1"), "e.jsonl", r"e.jsonl:1: byte 0xe9 is not UTF-8"),
        ("outside the project", b'{"question": "1+1="}\n', "../elsewhere.jsonl", r"outside the project directory"),
    ],
    "template": [
        ("a required placeholder missing", "MISSING", "t.txt", r"t.txt: .*needs the placeholders"),
        ("a placeholder never filled", "UNKNOWN", "t.txt", r"t.txt: .*\{nonsense\} is not one"),
        ("outside the project", b"{question} {response}", "../t.txt", r"outside the project directory"),
    ],
    "model": [
        ("no such directory", None, "./models/none", r"no such model directory"),
        ("a directory without a model", "EMPTY_DIR", "models/empty", r"holds no model \(no config.json\)"),
        ("a model without a tokenizer", "NO_TOKENIZER", "models/half", r"holds a model but no tokenizer"),
        ("builtin prefix one letter off", None, "builtins:tiny-arith", r"did you mean builtin:tiny-arith"),
        ("unknown builtin", None, "builtin:tiny-arithm", r"did you mean 'tiny-arith'"),
        ("hub id, offline, not cached", None, "nobody-xyz/no-model", r"not in the local hub cache, and HF_HUB_OFFLINE"),
    ],
    "callable": [
        ("no such module", None, "no_module_xyz:score", r"no module 'no_module_xyz'"),
        ("no such function", b"def other(q, r, g):\n    return 1.0\n", "myreward:score", r"myreward.py defines no 'score'"),
        ("syntax error", b"def score(q, r, g)\n    return 1.0\n", "myreward:score", r"myreward.py:1: .*cannot be imported"),
    ],
    "yaml": [
        ("not a mapping", b"- a\n- b\n", "acc.yaml", r"acc.yaml:1: expected a YAML mapping"),
        ("broken YAML", b"a: [1, 2\n", "acc.yaml", r"acc.yaml:\d+: .*YAML"),
        ("outside the project", b"a: 1\n", "../acc.yaml", r"outside the project directory"),
    ],
}


def _file_settings():
    """(stage, key, Reads) of every setting of every stage that names something validate reads."""
    return [(stage.name, key, setting.reads) for stage in stages() for key, setting in stage.settings.items()
            if setting.reads is not None]


def test_every_kind_a_setting_declares_has_a_reader_and_defects():
    kinds = {reads.kind for _, _, reads in _file_settings()}
    assert kinds <= set(FILE_KINDS) and kinds <= set(DEFECTS), kinds - set(DEFECTS)
    assert {"pairs", "examples", "template", "model", "callable", "yaml"} <= kinds


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project holding the shipped loops and their example files (their paths are the project's)."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "loops", root / "loops")
    shutil.copytree(ROOT / "examples", root / "examples")
    return root


# Stages no shipped loop runs as it stands: the documented variant of a loop that does (docs/loops/).
VARIANTS = {
    "synthesize": ("rip.yaml", ["pipeline=[synthesize, generate, judge, pairs, filter, train, evaluate]",
                                "synthesize.examples=runs/rip/it1/pairs_kept.jsonl"]),
    "diversity": ("divpo.yaml", ["pipeline=[generate, reward, diversity, pairs, train, evaluate]"]),
}


def _loop_running(stage: str, root: Path) -> tuple[Path, list[str], int]:
    """A shipped loop (or its variant) with an iteration whose pipeline runs the stage: (its file, the
    --set that make the variant, the iteration)."""
    name, overrides = VARIANTS.get(stage, (None, []))
    shipped = sorted((root / "loops").glob("*.yaml")) + sorted((root / "examples").glob("*/*.yaml"))
    for path in [root / "loops" / name] if name else shipped:
        loop = load_loop(path, overrides)
        for k, pipeline in sorted(loop.pipelines.items()):
            if stage in pipeline:
                return path, overrides, k
    raise AssertionError(f"no shipped loop runs {stage}: add one (or a VARIANTS entry), so its settings are walked")


def _defect_value(root: Path, kind: str, reads, defect: str, content, value: str) -> str:
    if content == "MISSING":  # every placeholder the stage fills but one
        needed = list(reads.placeholders or reads.alternatives[0])
        content = " ".join("{" + p + "}" for p in needed[1:]).encode() + b" judge:"
    elif content == "UNKNOWN":
        needed = list(reads.placeholders or reads.alternatives[0])
        content = (" ".join("{" + p + "}" for p in needed) + " {nonsense}").encode()
    if content == "EMPTY_DIR":
        (root / value).mkdir(parents=True, exist_ok=True)
    elif content == "NO_TOKENIZER":
        (root / value).mkdir(parents=True, exist_ok=True)
        (root / value / "config.json").write_text('{"model_type": "gpt2"}')
    elif kind == "callable" and content is not None:
        (root / (value.partition(":")[0].replace(".", "/") + ".py")).write_bytes(content)
    elif content is not None:
        (root / value).write_bytes(content)
    return value


CASES = [(stage, key, reads, defect, content, value, expected)
         for stage, key, reads in _file_settings() for defect, content, value, expected in DEFECTS[reads.kind]
         if not (defect == "a model without a tokenizer" and not reads.tokenizer)]


@pytest.mark.parametrize("stage,key,reads,defect,content,value,expected", CASES,
                         ids=[f"{c[0]}.{c[1]}-{c[3]}" for c in CASES])
def test_every_setting_that_names_something_refuses_each_defect_of_its_kind(project, monkeypatch, stage, key, reads,
                                                                          defect, content, value, expected):
    monkeypatch.chdir(project)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loop_file, overrides, k = _loop_running(stage, project)
    value = _defect_value(project, reads.kind, reads, defect, content, value)
    started = time.monotonic()
    with pytest.raises(UserError) as error:
        load_loop(loop_file, overrides + [f"schedule.{k}.{stage}.{key}={value}"])
    assert time.monotonic() - started < 1.0
    lines = str(error.value).splitlines()
    hits = [line for line in lines if re.search(expected, line)]
    assert hits, lines
    assert f"--set schedule.{k}.{stage}.{key}" in hits[0]  # named as the --set that gave it


def test_the_loop_s_model_refuses_each_defect_of_a_model(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (project / "loop.yaml").write_text(VALID)
    for defect, content, value, expected in DEFECTS["model"]:
        _defect_value(project, "model", None, defect, content, value)
        with pytest.raises(UserError, match=expected):
            load_loop(project / "loop.yaml", [f"model={value}"])


def test_a_hub_model_not_here_is_a_note_and_a_local_model_passes(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (project / "loop.yaml").write_text(VALID)
    loop = load_loop(project / "loop.yaml", ["model=nobody-xyz/no-model"])
    assert loop.notes and "will be downloaded from the hub on first use" in loop.notes[0]
    whole = project / "models" / "whole"
    whole.mkdir(parents=True, exist_ok=True)
    (whole / "config.json").write_text("{}")
    (whole / "tokenizer.json").write_text("{}")
    assert load_loop(project / "loop.yaml", ["model=models/whole"]).notes == []


def test_a_reward_function_is_found_without_running_the_module(project, monkeypatch):
    monkeypatch.chdir(project)
    (project / "loop.yaml").write_text(VALID + "pipeline: [generate, reward, pairs, train, evaluate]\n")
    (project / "sideeffect.py").write_text("import pathlib\npathlib.Path('ran.txt').write_text('ran')\n\n"
                                           "def score(question, response, gold):\n    return 1.0\n\n"
                                           "if __name__ == '__main__':\n    pass\n")
    loop = load_loop(project / "loop.yaml", ["reward.source=sideeffect:score", "pairs.rule=best_vs_worst"])
    assert loop.per_iteration[1]["reward"]["source"] == "sideeffect:score"
    assert not (project / "ran.txt").exists()  # its top-level code runs once, in the stage, not in validate


# --- Names resolve against what they name
NAMES = [
    ("best misspelt", ["best=accurracy"], r"--set best: no stage of this loop writes a metric 'accurracy'; did you mean 'accuracy'"),
    ("stop on a stage not run", ["stop=[{metric: judge_sample_agreement, below: 0.5}]"],
     r"'judge_sample_agreement' is written by judge, which no iteration of this loop runs"),
    ("a stage twice", ["pipeline=[generate, vote, vote, pairs, train, evaluate]"], r"vote is listed 2 times"),
    ("an empty pipeline", ["pipeline=[]"], r"--set pipeline: is empty"),
    ("settings of a stage not run", ["judge.n=5"], r"--set stages.judge.n: stages.judge: no iteration runs judge"),
    ("a very long name", ["name=" + "a" * 200], r"--set name: is 200 characters long; a run name has at most 64"),
    ("a schedule entry past the end", ["schedule.9.pairs.min_votes=0.6"],
     r"^--set schedule.9.pairs.min_votes: schedule.9: the loop has 2 iterations"),
]


@pytest.mark.parametrize("name,overrides,expected", NAMES, ids=[n[0] for n in NAMES])
def test_names_resolve_against_what_they_name_and_set_problems_name_the_set(tmp_path, monkeypatch, name, overrides,
                                                                          expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop.yaml").write_text(VALID)
    with pytest.raises(UserError) as error:
        load_loop(tmp_path / "loop.yaml", overrides)
    assert any(re.search(expected, line) for line in str(error.value).splitlines()), str(error.value)


def test_settings_of_a_stage_not_run_are_refused_in_the_file_with_their_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop.yaml").write_text(VALID + "  judge: {n: 4}\n")
    with pytest.raises(UserError, match=r"loop.yaml:7: stages.judge: no iteration runs judge"):
        load_loop(tmp_path / "loop.yaml")


def test_a_data_file_outside_the_project_is_refused(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "train.jsonl").write_text('{"question": "1+1="}\n')
    monkeypatch.chdir(project)
    (project / "loop.yaml").write_text(VALID.replace("builtin:arith/train", "../train.jsonl"))
    with pytest.raises(UserError, match=r"loop.yaml:3: data.prompts: ../train.jsonl is outside the project"):
        load_loop(project / "loop.yaml")
    (project / "train.jsonl").write_text('{"question": "1+1="}\n')  # the same file, copied in: fine
    (project / "loop.yaml").write_text(VALID.replace("builtin:arith/train", str(project / "train.jsonl")))
    assert load_loop(project / "loop.yaml").data["prompts"].endswith("train.jsonl")


def test_a_run_name_another_loop_made_is_refused_unless_replaced(tmp_path, monkeypatch):
    from selfimprove.pipeline import compiler

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "b.yaml").write_text(VALID.replace("beta: 0.5", "beta: 0.1"))
    compiler.write(tmp_path, load_loop(tmp_path / "a.yaml"))
    compiler.write(tmp_path, load_loop(tmp_path / "a.yaml", ["train.beta=0.2"]))  # its own loop, edited: fine
    with pytest.raises(UserError, match=r"b.yaml: a run named t already exists here, made by a.yaml; .*--replace"):
        compiler.write(tmp_path, load_loop(tmp_path / "b.yaml"))
    other = load_loop(tmp_path / "a.yaml")
    other.start_from = "u@1"
    with pytest.raises(UserError, match=r"run t started from its base model; starting it from u@1 would recompute"):
        compiler.write(tmp_path, other)
    replacing = load_loop(tmp_path / "b.yaml")
    replacing.replace = True
    compiler.write(tmp_path, replacing)
    assert "loop_file: b.yaml" in (tmp_path / "params.yaml").read_text()


def test_a_stage_check_names_the_schedule_entry_or_the_set_that_made_the_combination(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop.yaml").write_text(VALID.replace("iterations: 2\n", "iterations: 2\n"
                                                      "pipeline: [generate, reward, pairs, train, evaluate]\n")
                                        + "  pairs: {rule: best_vs_worst}\nschedule:\n  2:\n    reward: {source: json_keys}\n")
    with pytest.raises(UserError) as error:
        load_loop(tmp_path / "loop.yaml", ["schedule.1.reward.source=model"])
    lines = str(error.value).splitlines()
    assert any(line.startswith("loop.yaml:11: schedule.2.reward.keys: reward.source json_keys needs the keys")
               for line in [line.split("/")[-1] for line in lines]), lines
    assert any(line.startswith("--set schedule.1.reward.source: schedule.1.reward.model: reward.source model needs")
               for line in lines), lines
