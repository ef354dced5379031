"""The project's DVC workspace: DVC set up (with git), the environment DVC runs in, one selfimprove
command at a time in a workspace (the workspace lock), and DVC's own locks: cleared when left by a dead
process, named when a live one holds them."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from selfimprove.core import files
from selfimprove.core.errors import UserError

LOCK_FILE = "runs/.selfimprove.lock"


def ensure_dvc(project: Path) -> None:
    """Initialise DVC in the project if needed (with or without git), analytics off (no network)."""
    from selfimprove.pipeline import gitsetup

    if (project / ".dvc").is_dir():
        gitsetup.follow_git(project)  # made outside git, in a repository now: DVC uses git from here on
        return
    # DVC refuses a git-ignored dvc.lock, so it is used without git there (gitsetup.git_state)
    flags = {"none": ["--no-scm"], "ignored": ["--no-scm"], "root": [], "subdir": ["--subdir"]}
    _dvc(project, "init", "-q", *flags[gitsetup.git_state(project)])
    _dvc(project, "config", "core.analytics", "false")
    # Keep DVC's hash database inside the project (default is /var/tmp, see dvc#9249).
    _dvc(project, "config", "core.site_cache_dir", ".dvc/site-cache")
    gitsetup.ignore_internals(project)  # the cache is git-ignored even when DVC was set up without git
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


DVC_RWLOCK = ".dvc/tmp/rwlock"


def clear_dead_dvc_locks(project: Path) -> None:
    """Drop entries of DVC's rwlock held by processes that are gone or are zombies, or whose pid another
    process took since, or the whole file when a kill cut it short. DVC clears dead pids itself, but a dvc
    killed a moment ago can still be an unreaped zombie (and in a container whose pid 1 does not reap, it
    stays one), which DVC takes for a live holder: "is busy"."""
    path = project / DVC_RWLOCK
    try:
        lock = json.loads(path.read_text())
        written = path.stat().st_mtime
    except OSError:
        return
    except ValueError:
        # Cut short by a kill while DVC wrote it (measured: benchmarks/chaos.py); DVC then refuses every
        # command ("JSON structure is corrupted"). It records only who holds what now, and nobody does.
        path.unlink()
        return

    def alive(info: dict) -> bool:
        return _holder(info, written) is not None

    cleaned = {
        "write": {p: info for p, info in lock.get("write", {}).items() if alive(info)},
        "read": {p: kept for p, infos in lock.get("read", {}).items() if (kept := [i for i in infos if alive(i)])},
    }
    if cleaned != lock:
        # A temporary name DVC never uses for its own files in .dvc/tmp.
        files.write_text(path, json.dumps(cleaned), tmp_suffix=".selfimprove-tmp")


def check_no_live_dvc_lock(project: Path) -> None:
    """Refuse in one line while a live process holds DVC's lock (after clear_dead_dvc_locks): its pid,
    command line, since when, and what to do. DVC would say "is busy" and suggest deleting the lock by
    hand, wrong while its holder lives. Under the workspace lock no run of ours holds it: the holder is a
    `dvc` started by hand, or one a kill of selfimprove alone (SIGKILL) left running with its stage."""
    path = project / DVC_RWLOCK
    try:
        lock = json.loads(path.read_text())
        written = path.stat().st_mtime
    except (OSError, ValueError):
        return
    infos = [*lock.get("write", {}).values(), *(i for infos in lock.get("read", {}).values() for i in infos)]
    holders = {process.pid: process for info in infos if (process := _holder(info, written))}
    if not holders:
        return
    named, pids = [], list(holders)
    for process in holders.values():
        children = _children(process)
        pids += [child.pid for child in children if child.pid not in pids]
        named.append(f"pid {process.pid} `{_command(process)}` since {_since(process)}"
                     + "".join(f", with pid {child.pid} `{_command(child)}`" for child in children))
    who = "a live process" if len(holders) == 1 else "live processes"
    raise UserError(f"DVC's lock ({DVC_RWLOCK}) is held by {who}: {'; '.join(named)}; wait for it to finish, or "
                    f"stop it (`kill {' '.join(map(str, pids))}`), then run again")


def _holder(info: dict, written: float):
    """The live process (psutil) that holds a lock entry, or None: gone, a zombie, or a process that took
    its pid later (started after the lock file was last written: a rerun in a fresh container reuses low
    pids)."""
    import psutil

    try:
        process = psutil.Process(int(info["pid"]))
    except (psutil.NoSuchProcess, ValueError, KeyError, TypeError):
        return None
    try:
        if process.status() == psutil.STATUS_ZOMBIE or process.create_time() > written + 2.0:  # clock slack
            return None
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:  # another user's process: it may be the holder, as DVC assumes
        pass
    return process


def _children(process) -> list:
    """The descendants of a lock holder: a dvc's running stage (killing dvc alone would orphan it)."""
    import psutil

    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def _command(process, width: int = 100) -> str:
    import psutil

    try:
        line = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return "?"
    return line if len(line) <= width else line[: width - 3] + "..."


def _since(process) -> str:
    import psutil

    try:
        started = process.create_time()
    except psutil.Error:
        return "?"
    today = time.strftime("%Y-%m-%d") == time.strftime("%Y-%m-%d", time.localtime(started))
    return time.strftime("%H:%M:%S" if today else "%Y-%m-%d %H:%M:%S", time.localtime(started))
