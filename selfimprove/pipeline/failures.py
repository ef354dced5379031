"""Why a `dvc repro` failed, in the one line a run ends with: the stage's own `error:` line, the last line
of a traceback from before the stage could start, a full disk, or DVC's own ERROR (a stage killed by a
signal named)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

RUNNING_RE = re.compile(r"Running stage '([^']+)'")


def failure_line(repro, code: int, log: Path, description: str, console) -> str:
    """The one line a failed `dvc repro` (a selfimprove.pipeline.runner.Repro) ends the run with: the
    stage, the cause (the stage's `error:` line, or DVC's), the log that holds the traceback, and how to
    resume. With SELFIMPROVE_DEBUG=1 the failed stage's output (its traceback) is printed first."""
    output = _stage_output(repro, log)
    if os.environ.get("SELFIMPROVE_DEBUG"):
        shown = [line for line in output[-300:] if not line.startswith("error: ")]  # the last line says it
        console.print("\n".join(shown), markup=False, highlight=False, soft_wrap=True)
    reason, explained = cause(output, code)
    failed = f"{repro.current} failed" if repro.current else "dvc repro failed"
    look = "" if explained else "; the cause is in the log"
    again = "" if "run again" in reason else f"; fix the cause and run `{description}` again: finished stages are kept"
    return f"{failed}: {reason}{look} (full log: {log}){again}"


def _stage_output(repro, log: Path) -> list[str]:
    """The failed stage's output and DVC's after it: the log from the stage's `Running stage` line on (the
    tail keeps 30 lines, and a launcher's report after the stage's `error:` line, accelerate's, can be
    longer); the tail when no stage ran in this repro or the log cannot be read."""
    if repro.current is None:
        return repro.tail
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return repro.tail
    starts = [i for i, line in enumerate(lines) if RUNNING_RE.search(line)]
    return lines[starts[-1]:] if starts else repro.tail


def _exception_line(tail: list[str]) -> str | None:
    """The `Type: message` line that ends the last Python traceback in the tail, or None."""
    starts = [i for i, line in enumerate(tail) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        return None
    return next((line for line in tail[starts[-1] + 1:] if line.strip() and not line[0].isspace()), None)


def _dvc_error(message: str) -> tuple[str, bool]:
    """(DVC's own ERROR message as the cause, whether it names one): without the stage's command line (long,
    and in the log), a signal that killed the stage named."""
    message = re.sub(r"^failed to reproduce '[^']*': ", "", message)
    exited = re.search(r"failed to run: .*, exited with (-?\d+)$", message)
    if not exited:
        return f"DVC: {message}", True
    status = int(exited.group(1))
    if status >= 0:
        return f"the stage exited with status {status} without saying why", False
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    hint = " (often the out-of-memory killer: `dmesg` or `journalctl -k` says)" if -status == signal.SIGKILL else ""
    return f"the stage was killed by {name}{hint}", True


def cause(lines: list[str], code: int) -> tuple[str, bool]:
    """(why the run stopped, whether that names the cause), from the lines a failed `dvc repro` printed
    (the failed stage's whole output, or the last lines). A stage ends however it failed with one
    `error:` line (selfimprove.core.errors.stage_main); one that died before it could (at import) leaves its
    traceback's last line; DVC reports its own full disk (writing dvc.lock or its cache), and its other
    failures in `ERROR: ...` lines, a stage killed by a signal among them."""
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1], True
    if any("No space left on device" in line or "Errno 28" in line for line in lines):
        return ("no space left on device while DVC recorded the stage (dvc.lock, or the copy of its outputs "
                "in .dvc/cache); free space there (df -h) and run again: finished stages are kept"), True
    if crash := _exception_line(lines):
        return f"{crash} (before the stage could start; the traceback is in the log)", True
    dvc = [line.removeprefix("ERROR: ").strip() for line in lines if line.startswith("ERROR: ")]
    if dvc:
        return _dvc_error(dvc[-1])
    return f"dvc repro exit {code}", False
