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
