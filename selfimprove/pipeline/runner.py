"""`selfimprove run`: compile a loop and drive `dvc repro` as a subprocess, with rich progress.

Signals: DVC ignores SIGINT in its main thread while a stage runs, and killing only the dvc process
orphans the stage (docs/dvc-notes.md). So `dvc repro` and its stages stay in selfimprove's process
group: Ctrl-C in a terminal reaches the stage itself, and a kill of the group takes everything down
together (nothing keeps running behind the user's back). When selfimprove alone is interrupted, it
signals every descendant itself. dvc.lock is written after every stage, so a rerun after any crash
redoes only unfinished work.

SIGTERM (a scheduler reclaiming the machine: Slurm, Kubernetes) and SIGHUP (a closed terminal) reach
selfimprove alone, and stop the run as Ctrl-C does: while `run` runs they raise `Stopped` in the main
thread, handled where KeyboardInterrupt is (selfimprove.pipeline.interrupts stops the processes). The exit
code is then 128 + the signal number, as a shell
reports a process the signal killed.
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

from selfimprove.core import warm_link
from selfimprove.core.errors import UserError
from selfimprove.pipeline import failures
from selfimprove.pipeline.failures import RUNNING_RE, failure_line
from selfimprove.pipeline.interrupts import (CTRL_C_GRACE, Start, Stopped, descendants, ignore_signals, interrupt_in,
                                             running, signals_stop_the_run, stop_descendants)
from selfimprove.pipeline.workspace import (check_no_live_dvc_lock, clear_dead_dvc_locks, dvc_env, ensure_dvc,
                                            workspace_lock)

SKIP_RE = re.compile(r"Stage '([^']+)' didn't change, skipping")


class Repro:
    """A `dvc repro` subprocess whose output is logged and parsed for the stage being run."""

    def __init__(self, project: Path, targets: list[str], log_path: Path, progress_path: Path,
                 engine_env: dict | None = None):
        self.current, self.ran, self.skipped, self.tail = None, [], [], []
        self.current_since = 0.0
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(dvc_env(), SELFIMPROVE_PROGRESS=str(progress_path.resolve()))
        env.pop(warm_link.ENV, None)  # only this run's own warm engine, never one a variable left behind
        env.update(engine_env or {})
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

    def wait(self) -> int:
        code = self.process.wait()
        self.reader.join(5)
        try:
            self.log.close()
        except OSError:
            pass
        return code

    def failure(self, code: int, lines: list[str] | None = None) -> tuple[str, bool]:
        """(why the run stopped, whether that names the cause), from the output's last lines (or `lines`:
        the failed stage's whole output): selfimprove.pipeline.failures.cause."""
        return failures.cause(self.tail if lines is None else lines, code)


def run(loop_path: str, overrides: list[str], start_from: str | None, project: Path, console,
        replace: bool = False) -> int:
    """Run a loop to its last iteration; the exit code. Ctrl-C, SIGTERM or SIGHUP at any moment stop it with
    nothing left running and one line saying how to resume."""
    description = command_line(loop_path, overrides, start_from)  # what the hints tell the user to run again
    Start.note()
    with signals_stop_the_run():
        try:
            return _run(loop_path, overrides, start_from, project, console, description, replace)
        except KeyboardInterrupt as interrupt:  # before dvc started or between batches; _reproduce stops dvc
            return _stop_run(interrupt, None, console, description)


def _run(loop_path: str, overrides: list[str], start_from: str | None, project: Path, console,
         description: str, replace: bool) -> int:
    from selfimprove import results
    from selfimprove.pipeline import compiler, dvclock, engine_broker

    loop = prepared_loop(loop_path, overrides, start_from, project, console, replace)
    with workspace_lock(project, description):  # before `dvc init`: two first runs at once init once
        ensure_dvc(project)
        stages = compiler.write(project, loop)
        run_path = project / compiler.run_dir(loop.name)
        progress_path = run_path / ".progress.json"
        progress_path.unlink(missing_ok=True)
        clear_dead_dvc_locks(project)  # we hold the workspace lock: no other run of ours is using DVC here
        check_no_live_dvc_lock(project)  # e.g. a dvc orphaned by a SIGKILL of selfimprove alone: named, not "busy"
        if repaired := dvclock.repair(project / "dvc.lock"):
            console.print(f"[yellow]{repaired}[/yellow]", highlight=False)
        started = time.time()
        ran: list[str] = []
        with engine_broker.for_run(loop, project, console) as engine:  # engine: warm, else {}
            code, stopped, stages = _run_batches(loop, project, stages, run_path, console, description, ran, engine)
        if code is not None:
            return code
        _record_stop(run_path, stopped)
    elapsed = time.time() - started
    console.print(f"{loop.name}: {len(ran)} stage(s) ran, {max(len(stages) - len(ran), 0)} up to date, {elapsed:.1f} s")
    if stopped:
        console.print(f"[yellow]{loop.name}: {stopped}[/yellow]", highlight=False)
    results.print_metrics(project, loop.name, console)
    return 0


def _run_batches(loop, project: Path, stages: list[str], run_path: Path, console, description: str, ran: list[str],
                 engine: dict) -> tuple[int | None, str | None, list[str]]:
    """(the exit code when a batch stopped the run, else None; the stop rule that ended it, if one did; the
    run's stages, fewer when a rule stopped it)."""
    from selfimprove import results
    from selfimprove.loop import stop as stop_rules
    from selfimprove.pipeline import compiler, empty

    progress_path = run_path / ".progress.json"
    # One target, the run's report: DVC reproduces everything upstream of it and checks each stage
    # once (17 explicit targets cost 12 s on a no-op rerun, this costs 3 s). With stop rules, one
    # iteration at a time, the rules checked after each.
    said: set[int] = set()  # iterations whose empty training set was said (selfimprove.pipeline.empty)
    for targets, k in _batches(loop, stages):
        code = _reproduce(project, targets, stages, run_path, progress_path, console, description, ran, engine)
        if code is not None:
            return code, None, stages
        empty.say(project, loop.name, [k] if k else range(1, loop.iterations + 1), said, console)
        if k is not None and (stopped := stop_rules.fired(loop.stop, results.iteration_metrics(project, loop.name), k)):
            loop.iterations = k  # later iterations leave dvc.yaml: nothing after the stop runs
            stages = compiler.write(project, loop)
            code = _reproduce(project, compiler.run_targets(loop.name), stages, run_path, progress_path, console,
                              description, ran, engine)
            return code, stopped, stages
    return None, None, stages


def prepared_loop(loop_path: str, overrides: list[str], start_from: str | None, project: Path, console,
                  replace: bool = False):
    """The loop as `run` runs it: loaded and checked (files another step makes included), --from applied
    and RUN@best resolved (and said)."""
    from selfimprove import results
    from selfimprove.loop.loopfile import FROM_RE, load_loop

    loop = load_loop(loop_path, overrides, made_files=True)
    loop.replace = replace
    for note in loop.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
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
               description: str, ran: list[str], engine_env: dict) -> int | None:
    """Run `dvc repro` on targets with the progress display; None when it succeeded, 128 + the signal on
    Ctrl-C (130), SIGTERM or SIGHUP; a failed stage raises its one-line error."""
    repro = None
    try:
        # in the try: a signal can come once dvc has started, before Repro returns
        repro = Repro(project, targets, run_path / "repro.log", progress_path, engine_env)
        _show_progress(repro, stages if len(targets) == 1 else targets, progress_path, console)
    except BaseException as error:
        # Whatever ends the display, dvc and its stage must not outlive it. The interrupt can also come as the
        # context of errors the display raised while closing: EIO, writing to the terminal SIGHUP closed.
        interrupt = interrupt_in(error)
        if interrupt is None:
            stop_descendants()
            raise
        return _stop_run(interrupt, repro, console, description)
    code = repro.wait()
    ran += [name for name in repro.ran if name not in ran]
    if code != 0:
        raise UserError(failure_line(repro, code, run_path / "repro.log", description, console))
    return None


def _stop_run(interrupt: KeyboardInterrupt, repro: Repro | None, console, description: str) -> int:
    """Stop everything the run started after Ctrl-C, SIGTERM or SIGHUP and say how to resume; the exit code
    (128 + the signal, as a shell reports a process the signal killed)."""
    signum = interrupt.signum if isinstance(interrupt, Stopped) else signal.SIGINT
    ignore_signals()  # a second Ctrl-C must not cut the stopping short; `run` restores the handlers
    if any(running(process) for process in descendants()):
        cause = "interrupted" if signum == signal.SIGINT else signal.Signals(signum).name
        _say(console, f"[yellow]{cause}: stopping the running stage...[/yellow]")
        # Ctrl-C in a terminal reached the whole group: the stage may end on its own. A signal sent to
        # selfimprove alone (a scheduler's SIGTERM) reached nobody else: no use waiting.
        stop_descendants(CTRL_C_GRACE if signum == signal.SIGINT else 0.0)
    if repro is not None:
        repro.wait()
    # soft_wrap: one line however narrow the console (a scheduler's log file is 80 columns to rich)
    _say(console, f"stopped; finished stages are kept. Run `{description}` again to resume.", markup=False,
         soft_wrap=True)
    return 128 + signum


def _say(console, text: str, **style) -> None:
    """Print, unless the output is gone: the terminal a SIGHUP closed (EIO), a pipe whose reader died."""
    try:
        console.print(text, **style)
    except OSError:
        pass


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
