"""DVC beside git, however the project began.

`dvc init --no-scm` (a project outside git) writes no .dvc/.gitignore, so a later `git init && git add -A`
would commit DVC's cache (the models) into git. Every project therefore ignores what DVC's own init
ignores with git, and a project made without git that sits in a git repository now is switched to git
(DVC then writes its dvc.lock with git in mind and `dvc push`/`pull` work from a clone).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

# What `dvc init` writes into .dvc/.gitignore with git, and the hash database selfimprove keeps there.
DVC_IGNORED = ("/config.local", "/tmp", "/cache", "/site-cache")
NO_SCM_RE = re.compile(r"^\s*no_scm\s*=\s*true\s*$", re.IGNORECASE | re.MULTILINE)


def git_state(project: Path) -> str:
    """'none' (in no git repository), 'ignored' (git ignores the project folder: DVC refuses a git-ignored
    dvc.lock, so it is used without git there), 'root' (the repository's top) or 'subdir'."""
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=project, capture_output=True, text=True)
    if top.returncode != 0:
        return "none"
    if subprocess.run(["git", "check-ignore", "-q", "."], cwd=project).returncode == 0:
        return "ignored"
    return "root" if Path(top.stdout.strip()).resolve() == project.resolve() else "subdir"


def ignore_internals(project: Path) -> None:
    """.dvc/.gitignore lists the cache, DVC's scratch and local config, with git or without."""
    path = project / ".dvc" / ".gitignore"
    lines = path.read_text().splitlines() if path.exists() else []
    missing = [line for line in DVC_IGNORED if line not in lines]
    if missing:
        path.write_text("".join(f"{line}\n" for line in lines + missing))


def follow_git(project: Path) -> bool:
    """Switch DVC to git when the project was set up without it and is in a git repository now; True when
    it switched. Reads .dvc/config first, so the common case costs no subprocess."""
    ignore_internals(project)
    config = project / ".dvc" / "config"
    if not config.is_file() or not NO_SCM_RE.search(config.read_text()):
        return False
    if git_state(project) not in ("root", "subdir"):
        return False
    subprocess.run([sys.executable, "-m", "dvc", "config", "--unset", "core.no_scm"], cwd=project,
                   capture_output=True, check=True, env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    return True
