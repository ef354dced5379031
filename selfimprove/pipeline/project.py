"""`selfimprove init LOOP [DIR]`: a project of one's own from a shipped loop, outside any clone of this
repository: the loop file (its header's commands rewritten for the project), the files it names that
ship with the package, git (when the folder is in no repository yet) and DVC set up with it, so the
project can be shared with colleagues from its first commit.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from selfimprove.core.errors import UserError
from selfimprove.loop.shipped import ShippedLoop, package_root, shipped


def init(name: str, directory: Path, force: bool = False) -> tuple[ShippedLoop, Path, list[str]]:
    """(the loop, the loop file written, notes for the user) for a shipped loop written into directory."""
    loop = shipped(name)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{loop.name}.yaml"
    if target.exists() and not force:
        raise UserError(f"{target} exists; pass --force to overwrite it, or give another folder")
    target.write_text(loop.text.replace(f"loops/{loop.name}.yaml", f"{loop.name}.yaml"))
    notes = _copy_files(loop, directory) + _made_by_a_step(loop, directory)
    notes += _version_control(directory)
    return loop, target, notes


def _copy_files(loop: ShippedLoop, directory: Path) -> list[str]:
    """Copy the shipped files the loop names (kept if the project has them already)."""
    notes = []
    for relative in loop.files():
        source, destination = package_root() / relative, directory / relative
        if source.is_file() and not destination.exists():
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
            notes.append(f"wrote {destination}")
    return notes


def _made_by_a_step(loop: ShippedLoop, directory: Path) -> list[str]:
    """The loop names a file no package ships (a reward model): say which command makes it."""
    missing = [p for p in loop.files() if not (package_root() / p).exists() and not (directory / p).exists()]
    commands = loop.prepare_commands()
    return [f"{path} does not exist yet: make it first with `{commands[0]}`" if commands else
            f"{path} does not exist yet: the loop reads it" for path in missing]


def _version_control(directory: Path) -> list[str]:
    """git first (when the folder is in no repository), then DVC with git: its cache is git-ignored."""
    from selfimprove.pipeline.gitsetup import git_state
    from selfimprove.pipeline.workspace import ensure_dvc

    notes = []
    if shutil.which("git") and git_state(directory) == "none":
        subprocess.run(["git", "init", "-q"], cwd=directory, check=True)
        notes.append(f"git init {directory}")
    ensure_dvc(directory)
    return notes
