"""`selfimprove run`: compile a loop and drive `dvc repro` as a subprocess, with rich progress.

Signals: DVC ignores SIGINT in its main thread while a stage runs, and killing only the dvc process
orphans the stage (docs/dvc-notes.md). So `dvc repro` and its stages stay in selfimprove's process
group: Ctrl-C in a terminal reaches the stage itself, and a kill of the group takes everything down
together (nothing keeps running behind the user's back). When selfimprove alone is interrupted, it
signals every descendant itself. dvc.lock is written after every stage, so a rerun after any crash
redoes only unfinished work.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from selfimprove.core.errors import UserError
from selfimprove.pipeline.workspace import clear_dead_dvc_locks, dvc_env, ensure_dvc, workspace_lock

RUNNING_RE = re.compile(r"Running stage '([^']+)'")
SKIP_RE = re.compile(r"Stage '([^']+)' didn't change, skipping")


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
    from selfimprove.pipeline import compiler, dvclock, empty
    from selfimprove import results
    from selfimprove.loop import stop as stop_rules

    loop = prepared_loop(loop_path, overrides, start_from, project, console)
    description = command_line(loop_path, overrides, start_from)  # what the hints tell the user to run again
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
        said: set[int] = set()  # iterations whose empty training set was said (selfimprove.pipeline.empty)
        for targets, k in _batches(loop, stages):
            code = _reproduce(project, targets, stages, run_path, progress_path, console, description, ran)
            if code is not None:
                return code
            empty.say(project, loop.name, [k] if k else range(1, loop.iterations + 1), said, console)
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


def prepared_loop(loop_path: str, overrides: list[str], start_from: str | None, project: Path, console):
    """The loop as `run` runs it: loaded and checked (files another step makes included), --from applied
    and RUN@best resolved (and said)."""
    from selfimprove import results
    from selfimprove.loop.loopfile import FROM_RE, load_loop

    loop = load_loop(loop_path, overrides, made_files=True)
    if start_from:
        if not FROM_RE.match(start_from):
            raise UserError(f"--from {start_from}: expected RUN@K or RUN@best, e.g. --from scpo@2")
        loop.start_from = start_from
    if loop.start_from:
        given, loop.start_from = loop.start_from, results.resolve_from(project, loop.start_from)
        if given != loop.start_from:
            console.print(f"from {given}: {loop.start_from}", highlight=False)
        _check_from(project, loop.start_from)
    return loop


def command_line(loop_path: str, overrides: list[str], start_from: str | None) -> str:
    """The `selfimprove run` command as given, shell-quoted: repeating it runs the same loop."""
    import shlex

    words = ["selfimprove", "run", str(loop_path)]
    words += [word for override in overrides for word in ("--set", override)]
    return shlex.join(words + (["--from", start_from] if start_from else []))


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
