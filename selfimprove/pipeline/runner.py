"""`selfimprove run`: compile a loop and drive `dvc repro` as a subprocess, with rich progress.

Signals: DVC ignores SIGINT in its main thread while a stage runs, and killing only the dvc process
orphans the stage (docs/dvc-notes.md). So `dvc repro` and its stages stay in selfimprove's process
group: Ctrl-C in a terminal reaches the stage itself, and a kill of the group takes everything down
together (nothing keeps running behind the user's back). When selfimprove alone is interrupted, it
signals every descendant itself. dvc.lock is written after every stage, so a rerun after any crash
redoes only unfinished work.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from selfimprove.core import files
from selfimprove.core.errors import UserError

LOCK_FILE = "runs/.selfimprove.lock"
RUNNING_RE = re.compile(r"Running stage '([^']+)'")
SKIP_RE = re.compile(r"Stage '([^']+)' didn't change, skipping")


def ensure_dvc(project: Path) -> None:
    """Initialise DVC in the project if needed (with or without git), analytics off (no network)."""
    if (project / ".dvc").is_dir():
        return
    in_git = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=project, capture_output=True, text=True)
    ignored = in_git.returncode == 0 and subprocess.run(["git", "check-ignore", "-q", "."], cwd=project).returncode == 0
    if in_git.returncode != 0 or ignored:  # DVC refuses a git-ignored dvc.lock, so use it without git there
        flags = ["--no-scm"]
    else:
        flags = [] if Path(in_git.stdout.strip()).resolve() == project.resolve() else ["--subdir"]
    _dvc(project, "init", "-q", *flags)
    _dvc(project, "config", "core.analytics", "false")
    # Keep DVC's hash database inside the project (default is /var/tmp, see dvc#9249).
    _dvc(project, "config", "core.site_cache_dir", ".dvc/site-cache")
    with open(project / ".dvc" / ".gitignore", "a") as ignore:
        ignore.write("/site-cache\n")
    gitignore = project / ".gitignore"
    lines = gitignore.read_text().splitlines() if gitignore.exists() else []
    if "/runs/" not in lines:  # routes around dvc#11091: outputs never end up tracked by git
        gitignore.write_text("\n".join(lines + ["/runs/"]) + "\n")


def dvc_env() -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    # Stage commands say `python`: make it the interpreter selfimprove runs in, venv activated or not.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True,
                            env=dvc_env())
    if result.returncode != 0:
        raise UserError(f"dvc {' '.join(args)} failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}")
    return result


@contextmanager
def workspace_lock(project: Path, description: str):
    """One `selfimprove run` per workspace. flock is released by the kernel even on SIGKILL."""
    path = project / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        for _ in range(20):  # the holder writes its description just after taking the lock
            handle.seek(0)
            holder = handle.read().strip()
            if holder:
                break
            time.sleep(0.05)
        handle.close()
        holder = holder or "another process"
        raise UserError(f"{project}: busy: {holder}; wait for it to finish or stop it (Ctrl-C), then run again") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} running `{description}` since {time.strftime('%H:%M:%S')}")
    handle.flush()
    try:
        yield
    finally:
        handle.truncate(0)  # the holder's description is only meaningful while the lock is held
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def clear_dead_dvc_locks(project: Path) -> None:
    """Drop entries of DVC's rwlock held by processes that are gone or are zombies, or the whole file
    when a kill cut it short. DVC clears dead pids itself, but a dvc killed a moment ago can still be an
    unreaped zombie (and in a container whose pid 1 does not reap, it stays one), which DVC takes for a
    live holder: "is busy"."""
    import psutil

    path = project / ".dvc" / "tmp" / "rwlock"
    try:
        lock = json.loads(path.read_text())
    except OSError:
        return
    except ValueError:
        # Cut short by a kill while DVC wrote it (measured: benchmarks/chaos.py); DVC then refuses every
        # command ("JSON structure is corrupted"). It records only who holds what now, and nobody does.
        path.unlink()
        return

    def alive(info: dict) -> bool:
        try:
            return psutil.Process(int(info["pid"])).status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, ValueError, KeyError):
            return False

    cleaned = {
        "write": {p: info for p, info in lock.get("write", {}).items() if alive(info)},
        "read": {p: kept for p, infos in lock.get("read", {}).items() if (kept := [i for i in infos if alive(i)])},
    }
    if cleaned != lock:
        # A temporary name DVC never uses for its own files in .dvc/tmp.
        files.write_text(path, json.dumps(cleaned), tmp_suffix=".selfimprove-tmp")


class Repro:
    """A `dvc repro` subprocess whose output is logged and parsed for the stage being run."""

    def __init__(self, project: Path, targets: list[str], log_path: Path, progress_path: Path):
        self.current, self.ran, self.skipped, self.tail = None, [], [], []
        self.current_since = 0.0
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(dvc_env(), SELFIMPROVE_PROGRESS=str(progress_path.resolve()))
        self.log = open(log_path, "a")
        self.process = subprocess.Popen([sys.executable, "-m", "dvc", "repro", *targets], cwd=project, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self.log.write(line)
                self.log.flush()
            except OSError:  # a full disk: keep reading, or dvc blocks on a full pipe
                pass
            self.tail = (self.tail + [line.rstrip()])[-30:]
            if match := RUNNING_RE.search(line):
                self.current, self.current_since = match.group(1), time.time()
                self.ran.append(self.current)
            elif match := SKIP_RE.search(line):
                self.skipped.append(match.group(1))

    def stop(self, timeout: float = 20.0) -> None:
        """Stop dvc and the running stage: SIGINT to every descendant (a terminal's Ctrl-C has already
        sent one to the whole group), then SIGTERM, then SIGKILL, until dvc has exited."""
        import psutil

        try:
            self.process.wait(3.0)  # a terminal Ctrl-C already reached the stage: let it end on its own
            return
        except subprocess.TimeoutExpired:
            pass
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                tree = psutil.Process(self.process.pid)
                processes = tree.children(recursive=True) + [tree]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    process.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            try:
                self.process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def wait(self) -> int:
        code = self.process.wait()
        self.reader.join(5)
        try:
            self.log.close()
        except OSError:
            pass
        return code

    def failure(self, code: int) -> tuple[str, bool]:
        """(why the run stopped, whether that is the whole story). A stage that fails on input or a full
        disk prints one `error:` line; DVC reports its own full disk (writing dvc.lock or its cache);
        anything else is a crash whose log tail the user needs."""
        errors = [line.removeprefix("error: ") for line in self.tail if line.startswith("error: ")]
        if errors:
            return errors[-1], True
        if any("No space left on device" in line or "Errno 28" in line for line in self.tail):
            return ("no space left on device while DVC recorded the stage (dvc.lock, or the copy of its outputs "
                    "in .dvc/cache); free space there (df -h) and run again: finished stages are kept"), True
        return f"dvc repro exit {code}", False


def run(loop_path: str, overrides: list[str], start_from: str | None, project: Path, console) -> int:
    from selfimprove.pipeline import compiler, dvclock
    from selfimprove import results
    from selfimprove.loop import stop as stop_rules
    from selfimprove.loop.loopfile import FROM_RE, load_loop

    loop = load_loop(loop_path, overrides)
    if start_from:
        if not FROM_RE.match(start_from):
            raise UserError(f"--from {start_from}: expected RUN@K or RUN@best, e.g. --from scpo@2")
        loop.start_from = start_from
    if loop.start_from:
        given, loop.start_from = loop.start_from, results.resolve_from(project, loop.start_from)
        if given != loop.start_from:
            console.print(f"from {given}: {loop.start_from}", highlight=False)
        _check_from(project, loop.start_from)
    description = f"selfimprove run {loop_path}"
    with workspace_lock(project, description):  # before `dvc init`: two first runs at once init once
        ensure_dvc(project)
        stages = compiler.write(project, loop)
        run_path = project / compiler.run_dir(loop.name)
        progress_path = run_path / ".progress.json"
        progress_path.unlink(missing_ok=True)
        clear_dead_dvc_locks(project)  # we hold the workspace lock: no other run of ours is using DVC here
        if repaired := dvclock.repair(project / "dvc.lock"):
            console.print(f"[yellow]{repaired}[/yellow]", highlight=False)
        started = time.time()
        ran: list[str] = []
        stopped = None
        # One target, the run's report: DVC reproduces everything upstream of it and checks each stage
        # once (17 explicit targets cost 12 s on a no-op rerun, this costs 3 s). With stop rules, one
        # iteration at a time, the rules checked after each.
        for targets, k in _batches(loop, stages):
            code = _reproduce(project, targets, stages, run_path, progress_path, console, description, ran)
            if code is not None:
                return code
            if k is not None and (stopped := stop_rules.fired(loop.stop, results.iteration_metrics(project, loop.name), k)):
                loop.iterations = k  # later iterations leave dvc.yaml: nothing after the stop runs
                stages = compiler.write(project, loop)
                code = _reproduce(project, compiler.run_targets(loop.name), stages, run_path, progress_path, console,
                                  description, ran)
                if code is not None:
                    return code
                break
        _record_stop(run_path, stopped)
    elapsed = time.time() - started
    console.print(f"{loop.name}: {len(ran)} stage(s) ran, {max(len(stages) - len(ran), 0)} up to date, {elapsed:.1f} s")
    if stopped:
        console.print(f"[yellow]{loop.name}: {stopped}[/yellow]", highlight=False)
    results.print_metrics(project, loop.name, console)
    return 0


def _batches(loop, stages: list[str]):
    """(dvc repro targets, the iteration after which the stop rules are checked, or None): the run's report
    alone for a loop without rules; else each iteration's stages in turn, then the report."""
    from selfimprove.pipeline import compiler

    if loop.stop:
        for k in range(1, loop.iterations + 1):
            # iteration 0 (the base model) goes with iteration 1: rules compare with it
            wanted = {str(k), "0"} if k == 1 else {str(k)}
            yield [name for name in stages if (match := compiler.STAGE_RE.match(name)) and match["k"] in wanted], k
    yield compiler.run_targets(loop.name), None


def _reproduce(project: Path, targets: list[str], stages: list[str], run_path: Path, progress_path: Path, console,
               description: str, ran: list[str]) -> int | None:
    """Run `dvc repro` on targets with the progress display; None when it succeeded, 130 on Ctrl-C; a
    failed stage raises its one-line error."""
    repro = Repro(project, targets, run_path / "repro.log", progress_path)
    try:
        _show_progress(repro, stages if len(targets) == 1 else targets, progress_path, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping the running stage...[/yellow]")
        repro.stop()
        repro.wait()
        console.print(f"stopped; finished stages are kept. Run `{description}` again to resume.")
        return 130
    code = repro.wait()
    ran += [name for name in repro.ran if name not in ran]
    if code != 0:
        failed = repro.current or "a stage"
        reason, explained = repro.failure(code)
        if explained:
            raise UserError(f"{failed} failed: {reason} (full log: {run_path / 'repro.log'})")
        tail = "\n".join(line for line in repro.tail[-12:] if line.strip())
        console.print(tail, markup=False, highlight=False)
        raise UserError(f"{failed} failed ({reason}); full log: {run_path / 'repro.log'}; "
                        f"fix the cause and run `{description}` again: finished stages are kept")
    return None


def _record_stop(run_path: Path, stopped: str | None) -> None:
    """runs/RUN/stop.json: the rule that ended the run (status shows it), removed when none did."""
    path = run_path / "stop.json"
    if stopped:
        path.write_text(json.dumps({"stopped": stopped}) + "\n")
    else:
        path.unlink(missing_ok=True)


def _check_from(project: Path, start_from: str) -> None:
    run, k = start_from.split("@")
    model = project / "runs" / run / f"it{k}" / "model"
    # a whole model, a LoRA adapter or a temperature head: each is a model reference
    if int(k) > 0 and not any((model / name).exists() for name in ("config.json", "adapter_config.json",
                                                                   "temperature_head.json")):
        raise UserError(f"--from {start_from}: {model} does not exist; run that loop to iteration {k} first "
                        f"(selfimprove status shows what is done)")


def _show_progress(repro: Repro, stages: list[str], progress_path: Path, console) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        overall = bar.add_task("stages", total=len(stages), unit="", rate="")
        current_task, current_name = None, None
        while repro.process.poll() is None:
            time.sleep(0.3)
            bar.update(overall, completed=len(set(repro.ran[:-1]) | set(repro.skipped)))
            if repro.current != current_name:
                if current_task is not None:
                    _finish(bar, current_task)
                current_name = repro.current
                current_task = bar.add_task(f"  {current_name}", total=None, unit="", rate="")
            if current_task is not None:
                _update_stage(bar, current_task, progress_path, repro.current_since)
        if current_task is not None:
            _update_stage(bar, current_task, progress_path, repro.current_since)
            if repro.process.returncode == 0:
                _finish(bar, current_task)
        bar.update(overall, completed=len(set(repro.ran) | set(repro.skipped)))


def _finish(bar, task) -> None:
    """Mark a stage's row complete and stop its clock (stages without item counts show 1/1)."""
    total = bar.tasks[task].total or 1
    bar.update(task, total=total, completed=total)
    bar.stop_task(task)


def _update_stage(bar, task, progress_path: Path, stage_since: float) -> None:
    try:
        record = json.loads(progress_path.read_text())
    except (OSError, ValueError):
        return
    if record["started"] < stage_since - 1.0:  # left by the previous stage; this one has not reported yet
        return
    rate = record["done"] / max(record["time"] - record["started"], 1e-9)
    bar.update(task, total=record["total"], completed=record["done"], unit=record["unit"], rate=f"{rate:.1f}/s")
