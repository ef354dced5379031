"""Faults between and inside runs: a full disk at each kind of write, files damaged between runs, a
cut-short dvc.lock, and a second command while a loop runs. The whole-loop figures (SIGKILLs, a real
full tmpfs, two loops at once) are measured by benchmarks/chaos.py; these tests pin each mechanism."""

from __future__ import annotations

import errno
import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selfimprove.pipeline import dvclock
from selfimprove.core import files  # the one atomic writer: its open is the one a full disk fails
from selfimprove.core.errors import DiskFull, UserError, is_disk_full, writing
from selfimprove.stages.shards import run_in_shards, scratch_dir
from selfimprove.stages import _io

ROOT = Path(__file__).resolve().parent.parent


class FullDiskFile(io.StringIO):
    """A file on a disk that fills up after `room` characters: the write that passes it fails as the
    kernel's does (ENOSPC, no file name), after keeping what fitted."""

    def __init__(self, path, room: int):
        super().__init__()
        self.path, self.room = Path(path), room

    def write(self, text: str) -> int:
        if self.tell() + len(text) > self.room:
            super().write(text[: max(self.room - self.tell(), 0)])
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(text)

    def close(self) -> None:
        self.path.write_text(self.getvalue())
        super().close()


def full_disk_open(room: int):
    def opener(path, mode="r", *args, **kwargs):
        if "w" in mode:
            return FullDiskFile(path, room)
        return open(path, mode, *args, **kwargs)
    return opener


def test_a_full_disk_while_writing_jsonl_names_the_file_and_leaves_neither_half_file(tmp_path, monkeypatch):
    target = tmp_path / "samples.jsonl"
    monkeypatch.setattr(files, "open", full_disk_open(room=100), raising=False)
    with pytest.raises(DiskFull) as caught:
        _io.write_jsonl(target, ({"i": i, "text": "x" * 20} for i in range(50)))
    assert str(target) in str(caught.value) and "no space left on device" in str(caught.value)
    assert "free space" in str(caught.value)
    assert sorted(tmp_path.iterdir()) == []  # no samples.jsonl, no samples.jsonl.tmp


def test_a_shard_cut_short_by_a_full_disk_is_never_reused(tmp_path, monkeypatch):
    out = tmp_path / "samples.jsonl"

    def work(shard, index, on_done):
        return [{"item": item, "double": item * 2} for item in shard]

    with monkeypatch.context() as patch:
        written = []
        real = _io.write_jsonl

        def fill_up_at_shard_2(path, records):
            if Path(path).name == "shard-00002.jsonl":
                patch.setattr(files, "open", full_disk_open(room=10), raising=False)
            written.append(Path(path).name)
            real(path, records)

        patch.setattr("selfimprove.stages.shards.write_jsonl", fill_up_at_shard_2)
        with pytest.raises(DiskFull):
            run_in_shards("test", list(range(10)), 2, out, "key", work)
    assert sorted(p.name for p in (scratch_dir(out) / "key").iterdir()) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    rows, reused = run_in_shards("test", list(range(10)), 2, out, "key", work)  # space freed: the rerun
    assert reused == 2 and [row["item"] for row in rows] == list(range(10))


def test_a_damaged_shard_is_redone_not_a_parse_error(tmp_path):
    out = tmp_path / "samples.jsonl"
    calls = []

    def work(shard, index, on_done):
        calls.append(index)
        return [{"item": item} for item in shard]

    run_in_shards("test", list(range(6)), 2, out, "key", work)
    (scratch_dir(out) / "key" / "shard-00001.jsonl").write_text('{"item": 2}\n{"ite')
    calls.clear()
    rows, reused = run_in_shards("test", list(range(6)), 2, out, "key", work)
    assert calls == [1] and reused == 2 and [row["item"] for row in rows] == list(range(6))


@pytest.mark.parametrize("message", ["[Errno 28] No space left on device", "I/O error: os error 28",
                                     "Disk quota exceeded"])
def test_hidden_disk_full_errors_are_recognised(message):
    assert is_disk_full(RuntimeError(message))
    assert not is_disk_full(RuntimeError("file write failed"))  # without a full disk under it: a crash


def test_a_writer_that_hides_the_errno_counts_as_disk_full_when_the_disk_is_full(tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=4096))
    with pytest.raises(DiskFull) as caught:
        with writing(tmp_path / "model"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")
    assert str(tmp_path / "model") in str(caught.value)


def test_a_stage_that_hits_a_full_disk_ends_in_one_line(tmp_path):
    script = ("from selfimprove.stages._io import stage_main\n"
              "def main():\n"
              "    raise OSError(28, 'No space left on device', 'runs/x/it1/model/model.safetensors')\n"
              "stage_main(main)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: no space left on device while writing runs/x/it1/model/model.safetensors; "
                     "free space there (df -h) and run again: finished stages and shards are kept"]


def test_a_checkpoint_whose_trainer_state_was_cut_short_is_not_resumed_from(tmp_path):
    from selfimprove.stages.train import last_complete_checkpoint

    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_step": 4, "log_hi'), (6, None)):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "model.safetensors").write_bytes(b"weights")
        if state is not None:
            (checkpoint / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]


# --- dvc.lock cut short -------------------------------------------------------------------------------

def dvc_accepts(path: Path) -> bool:
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA

    if not path.exists():
        return True  # no lock: DVC runs every stage (or restores it from its run cache)
    try:
        COMPILED_LOCKFILE_SCHEMA(yaml.safe_load(path.read_text()))
        return True
    except Exception:
        return False


def test_a_dvc_lock_cut_short_anywhere_is_repaired_into_one_dvc_accepts(tmp_path):
    """The committed dvc.lock (written by DVC) cut at 150 points: after repair DVC's own schema accepts
    it, and every record kept is the original's, in the original's order. (About a third of the cuts
    leave a file DVC refuses; the rest parse and pass its schema, and DVC re-runs the cut record's
    stage because its hashes no longer match.)"""
    original_text = (ROOT / "dvc.lock").read_text()
    original = yaml.safe_load(original_text)["stages"]
    lock = tmp_path / "dvc.lock"
    cuts = sorted(set(range(1, len(original_text), max(1, len(original_text) // 150))))
    repaired_count = 0
    for cut in cuts:
        lock.write_text(original_text[:cut])
        note = dvclock.repair(lock)
        assert dvc_accepts(lock), f"cut at {cut}: DVC refuses the repaired lock"
        if note is not None:
            repaired_count += 1
            assert "dvc.lock was damaged" in note and "\n" not in note
            kept = yaml.safe_load(lock.read_text())["stages"] if lock.exists() else {}
            assert list(kept) == list(original)[:len(kept)]
            assert all(kept[name] == original[name] for name in kept)
        lock.unlink(missing_ok=True)
    assert repaired_count >= len(cuts) // 5


def test_a_whole_dvc_lock_is_left_untouched(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text((ROOT / "dvc.lock").read_text())
    before = lock.stat().st_mtime_ns
    assert dvclock.repair(lock) is None and lock.stat().st_mtime_ns == before


def test_garbage_in_dvc_lock_is_dropped_with_the_records_after_it(tmp_path):
    text = (ROOT / "dvc.lock").read_text()
    names = list(yaml.safe_load(text)["stages"])
    third = text.index(f"  {names[2]}:\n")
    lock = tmp_path / "dvc.lock"
    lock.write_text(text[:third] + "  \x00\x00:\n    cmd: [unclosed\n" + text[third:])
    note = dvclock.repair(lock)
    assert note and list(yaml.safe_load(lock.read_text())["stages"]) == names[:2]


# --- files compile keeps, and a command while a loop runs ---------------------------------------------

LOOP = """\
name: f
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test, prompts_size: 8, eval_size: 8}
iterations: 1
"""


def cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfimprove.cli", *args], cwd=project, capture_output=True,
                          text=True, timeout=120)


def test_compile_is_refused_in_one_line_while_a_loop_runs_in_the_project(tmp_path):
    from selfimprove.pipeline.workspace import workspace_lock

    (tmp_path / "loop.yaml").write_text(LOOP)
    with workspace_lock(tmp_path, "selfimprove run other.yaml"):
        result = cli(tmp_path, "compile", "loop.yaml")
    assert result.returncode != 0 and not (tmp_path / "dvc.yaml").exists()
    output = (result.stdout + result.stderr).strip()
    assert len(output.splitlines()) == 1 and "busy" in output and "selfimprove run other.yaml" in output
    assert cli(tmp_path, "compile", "loop.yaml").returncode == 0  # once the run has ended


@pytest.mark.parametrize("damaged", ["params.yaml", "dvc.yaml"])
def test_a_damaged_compiled_file_is_named_with_its_line_and_the_way_out(tmp_path, damaged):
    (tmp_path / "loop.yaml").write_text(LOOP)
    assert cli(tmp_path, "compile", "loop.yaml").returncode == 0
    path = tmp_path / damaged
    path.write_text(path.read_text()[: len(path.read_text()) // 2] + "\n  - [unclosed: {\n")
    result = cli(tmp_path, "compile", "loop.yaml")
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0 and "Traceback" not in output and len(output.splitlines()) == 1
    assert f"{damaged}:" in output and "not valid YAML" in output and f"git checkout {damaged}" in output


def test_compiled_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from selfimprove.pipeline import compiler
    from selfimprove.loop.loopfile import load_loop

    (tmp_path / "loop.yaml").write_text(LOOP)
    loop = load_loop(str(tmp_path / "loop.yaml"))
    compiler.write(tmp_path, loop)
    before = {name: (tmp_path / name).read_text() for name in ("dvc.yaml", "params.yaml")}
    changed = load_loop(str(tmp_path / "loop.yaml"), ["iterations=2"])

    monkeypatch.setattr(files, "open", full_disk_open(room=0), raising=False)
    with pytest.raises(UserError, match="no space left on device while writing .*dvc.yaml"):
        compiler.write(tmp_path, changed)
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_text() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_the_runner_reports_a_stage_error_line_or_dvc_s_own_full_disk_alone():
    from selfimprove.pipeline.runner import Repro

    repro = Repro.__new__(Repro)
    repro.tail = ["Running stage 'f-it1-generate':", "> python -m selfimprove.stages.generate ...",
                  "error: no space left on device while writing runs/f/it1/samples.jsonl; free space",
                  "ERROR: failed to reproduce 'f-it1-generate': failed to run: python -m ..., exited with 2"]
    assert repro.failure(1) == ("no space left on device while writing runs/f/it1/samples.jsonl; free space", True)
    repro.tail = ["Updating lock file 'dvc.lock'", "ERROR: unexpected error - [Errno 28] No space left on device"]
    reason, explained = repro.failure(255)
    assert explained and "dvc.lock, or the copy of its outputs in .dvc/cache" in reason
    repro.tail = ["Traceback (most recent call last):", "ZeroDivisionError: division by zero"]
    assert repro.failure(1) == ("ZeroDivisionError: division by zero (before the stage could start; the traceback "
                                "is in the log)", True)  # more: tests/test_stage_failures.py
    repro.tail = ["Running stage 'f-it1-generate':"]
    assert repro.failure(1) == ("dvc repro exit 1", False)


def test_a_dvc_rwlock_cut_short_by_a_kill_is_cleared(tmp_path):
    """DVC writes .dvc/tmp/rwlock in place; a SIGKILL mid-write left it empty and DVC then refused every
    command ("JSON structure is corrupted"), measured by benchmarks/chaos.py."""
    from selfimprove.pipeline.workspace import clear_dead_dvc_locks

    rwlock = tmp_path / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True)
    rwlock.write_text('{"write": {"runs/c/it1/model": {"pid": 1')
    clear_dead_dvc_locks(tmp_path)
    assert not rwlock.exists()


# --- DVC's lock held by a live process, and a signal outside dvc ---------------------------------------

def write_rwlock(project: Path, pid: int) -> Path:
    """DVC's lock as `dvc repro` leaves it while it runs a stage: the stage's output written, its deps read."""
    import json

    rwlock = project / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "cmd": "/venv/lib/python3.11/site-packages/dvc/__main__.py repro f-report"}
    rwlock.write_text(json.dumps({"write": {"runs/f/it1/samples.jsonl": info}, "read": {"runs/f/it0": [info]}}))
    return rwlock


def test_a_dvc_lock_held_by_a_live_process_is_named_in_one_line_with_the_way_out(tmp_path):
    """A dvc that a SIGKILL of selfimprove alone left running still holds DVC's lock: the rerun names it
    (pid, command line, since when, with its stage) instead of DVC's "is busy" and its advice to delete the
    lock by hand; once it has ended, its entry is cleared and nothing is refused."""
    from selfimprove.pipeline.workspace import check_no_live_dvc_lock, clear_dead_dvc_locks

    holder = subprocess.Popen(["sleep", "60"])  # a real live process, started before it "wrote" the lock
    try:
        write_rwlock(tmp_path, holder.pid)
        clear_dead_dvc_locks(tmp_path)  # a live holder is kept
        with pytest.raises(UserError) as refused:
            check_no_live_dvc_lock(tmp_path)
    finally:
        holder.kill()
    [line] = refused.value.lines
    assert f"pid {holder.pid} `sleep 60` since " in line and ".dvc/tmp/rwlock" in line
    assert f"wait for it to finish, or stop it (`kill {holder.pid}`)" in line
    holder.wait()
    clear_dead_dvc_locks(tmp_path)
    check_no_live_dvc_lock(tmp_path)


def test_a_dvc_lock_entry_whose_pid_a_later_process_took_is_cleared(tmp_path):
    """A rerun in a fresh container reuses low pids: a process started after DVC last wrote its lock
    cannot hold it, and is not named."""
    import json
    import os
    import time

    from selfimprove.pipeline.workspace import check_no_live_dvc_lock, clear_dead_dvc_locks

    rwlock = write_rwlock(tmp_path, os.getpid())
    an_hour_ago = time.time() - 3600  # this test process started later than that
    os.utime(rwlock, (an_hour_ago, an_hour_ago))
    clear_dead_dvc_locks(tmp_path)
    check_no_live_dvc_lock(tmp_path)
    assert json.loads(rwlock.read_text()) == {"write": {}, "read": {}}


@pytest.mark.parametrize("moment", ["compiling", "between batches"])
def test_a_signal_before_dvc_starts_or_between_batches_stops_the_run_in_one_line(tmp_path, monkeypatch, moment):
    """SIGTERM or SIGHUP while `run` compiles or between two `dvc repro` batches (no dvc running): the exit
    code is 128 + the signal, one line says how to resume, and the caller's handlers are back after."""
    import io
    import os
    import signal

    from rich.console import Console

    from selfimprove.pipeline import compiler, empty, runner

    def signalled(original, sig):
        def call(*args, **kwargs):
            os.kill(os.getpid(), sig)  # its handler runs as soon as this returns, in this (main) thread
            return original(*args, **kwargs)
        return call

    (tmp_path / "loop.yaml").write_text(LOOP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "ensure_dvc", lambda project: None)
    monkeypatch.setattr(runner, "_reproduce", lambda *args: None)  # a batch that ran without dvc
    sig = signal.SIGTERM if moment == "compiling" else signal.SIGHUP
    if moment == "compiling":
        monkeypatch.setattr(compiler, "write", signalled(compiler.write, sig))
    else:
        monkeypatch.setattr(empty, "say", signalled(empty.say, sig))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    output = io.StringIO()
    code = runner.run("loop.yaml", [], None, tmp_path, Console(file=output, width=200))
    assert code == 128 + sig
    lines = [line for line in output.getvalue().splitlines() if line.strip()]
    assert lines[-1:] == ["stopped; finished stages are kept. Run `selfimprove run loop.yaml` again to resume."]
    assert "Traceback" not in output.getvalue() and "stopping the running stage" not in output.getvalue()
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert (tmp_path / "dvc.yaml").exists() == (moment == "between batches")
