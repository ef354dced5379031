"""Stopping a run's processes: SIGTERM and SIGHUP raised as `Stopped` in the main thread while `run` runs,
and every process the run started (dvc, its stage, theirs) stopped in steps, SIGINT first so that a stage
ends as on Ctrl-C with its shards and checkpoints on disk. Used by selfimprove.pipeline.runner.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
# How long each step of stopping the descendants waits for them all to be gone before the next, harder
# signal: SIGINT lets a stage end as on Ctrl-C (its shards and checkpoints are on disk already). 20 s in
# all: inside the 30 s grace period of Slurm (KillWait) and Kubernetes (terminationGracePeriodSeconds).
STOP_STEPS = ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0))
CTRL_C_GRACE = 3.0  # a terminal's Ctrl-C reached the whole group: the stage may end on its own


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread: the run stops as on Ctrl-C, exit 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Start:
    """What `run` found as it began: the processes already under this one (an in-process caller's, a
    test's: not the run's to stop), and whether SIGINT was ignored (`selfimprove run ... &` in a script:
    dvc and the stages inherit that, so only SIGTERM stops them)."""

    spared: set = set()
    sigint_ignored = False

    @classmethod
    def note(cls) -> None:
        cls.spared = set()  # first: descendants() leaves the spared ones out
        cls.spared = descendants()  # none under the CLI
        cls.sigint_ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def interrupt_in(error: BaseException) -> KeyboardInterrupt | None:
    """The interrupt (Ctrl-C, Stopped) that error is, or that it was raised while handling, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__context__
    return None


def stop_descendants(grace: float = 0.0) -> None:
    """Stop every process the run started (dvc, its stage, theirs) and return once all are gone: after
    `grace` seconds for them to end on their own, each signal of STOP_STEPS in turn to those left, the
    ones they start meanwhile included. A process is followed by its pid, so a stage whose dvc died first
    (and that was reparented away) is still stopped. At most grace + 20 s."""
    left = _signal_until_gone(set(), None, grace)
    for sig, wait in STOP_STEPS[1:] if Start.sigint_ignored else STOP_STEPS:
        if not left:
            return
        left = _signal_until_gone(left, sig, wait)


def _signal_until_gone(known: set, sig: int | None, timeout: float) -> set:
    """Send sig (None: none) once to each process of `known` and each descendant of this process or of
    them, as they appear, until all are gone or timeout; the ones still running."""
    signalled: set = set()
    deadline = time.monotonic() + timeout
    while True:
        known = {process for process in descendants(known) if running(process)}
        for process in known - signalled if sig is not None else ():
            try:
                process.send_signal(sig)
            except Exception:  # noqa: BLE001 - gone meanwhile, or its pid reused: not ours to signal
                pass
            signalled.add(process)
        if not known or time.monotonic() >= deadline:
            return known
        time.sleep(0.1)


def descendants(known: set = frozenset()) -> set:
    """`known` and the processes below it and below this process, but for Start.spared ones and theirs.
    One scan of the process table, where psutil's children() scans it once per parent."""
    import psutil

    below: dict[int, list] = {}
    for process in psutil.process_iter(["ppid"]):
        below.setdefault(process.info["ppid"], []).append(process)
    found, parents = set(known), [os.getpid(), *(process.pid for process in known)]
    while parents:
        for child in below.get(parents.pop(), []):
            if child not in found and child not in Start.spared:
                found.add(child)
                parents.append(child.pid)
    return found


def running(process) -> bool:
    """Whether a process still runs: a zombie has ended (its parent has yet to reap it)."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextmanager
def signals_stop_the_run():
    """While `run` runs, SIGTERM and SIGHUP raise Stopped in the main thread; the previous handlers (and
    SIGINT's) are back after. A signal ignored already stays ignored: `nohup` ignores SIGHUP on purpose."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    for sig in STOP_SIGNALS:
        if previous[sig] != signal.SIG_IGN:
            signal.signal(sig, _raise_stopped)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(sig, handler)


def _raise_stopped(signum: int, frame) -> None:
    ignore_signals()  # one stop at a time: a scheduler may repeat SIGTERM while the first one is handled
    raise Stopped(signum)


def ignore_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, *STOP_SIGNALS):
            signal.signal(sig, signal.SIG_IGN)
