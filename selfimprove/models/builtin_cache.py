"""A user-level cache of built builtin models, shared by every project on the machine: a second project
bootstrapping `builtin:tiny-arith` copies the first one's model instead of training it again.

Where: $SELFIMPROVE_CACHE/builtins, else the platform's cache directory (~/.cache/selfimprove/builtins on
Linux). An entry is keyed by what determines the model bit for bit: the code fingerprints the compiler
recorded for the bootstrap node (params.yaml `code`), the resolved settings, the torch version and the
CPU kernels torch dispatches to (the same seed gives other weights with AVX-512, README), so one kind of
machine is never handed another's model. An entry is complete once its marker file exists (written
last, after the files, in a temporary directory renamed into place); anything else is never used.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import yaml

from selfimprove.core.registry import resolve
from selfimprove.core.stage import unit_key, variant_of

ENVIRONMENT = "SELFIMPROVE_CACHE"
MARKER = ".selfimprove-complete"  # written last: an entry without it is partial (a kill, a full disk)


def root() -> Path:
    """The builtins' cache directory: $SELFIMPROVE_CACHE/builtins, else the platform's user cache."""
    if os.environ.get(ENVIRONMENT):
        return Path(os.environ[ENVIRONMENT]).expanduser() / "builtins"
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("selfimprove")) / "builtins"
    except ImportError:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "selfimprove" / "builtins"


def machine() -> dict:
    """What makes the same code and seed give other weights on another machine."""
    import torch

    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(), "arch": platform.machine()}


def entry_name(argv, settings: dict) -> str | None:
    """<builtin>-<16 hex of the key> for the builder command's arguments (--params, --section) and its
    resolved settings; None when params.yaml holds no recorded fingerprint of its code (not compiled by
    selfimprove): then nothing says which code built an entry, so the cache is not used."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", required=True)
    parser.add_argument("--section", required=True)
    args, _ = parser.parse_known_args(argv)
    name = args.section.split(".", 1)[1]
    recorded = (yaml.safe_load(Path(args.params).read_text()) or {}).get("code") or {}
    units = resolve("builtin model", variant_of(name)).code_units(settings)
    code = {unit: recorded.get(unit_key(unit)) for unit in units}
    if not all(code.values()):
        return None
    key = json.dumps({"code": code, "settings": settings, "machine": machine()}, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def built_once(name: str | None, out: str | Path, build: Callable[[], dict]) -> dict | None:
    """Fill out from the cache entry `name` if it is complete (None: nothing built); else build() and
    fill the entry, returning build's figures. A lock makes two projects that bootstrap the same model at
    once build it once: the second waits, then finds the entry."""
    if name is None:
        return build()
    entry = root() / name
    if _restored(entry, out):
        return None
    try:
        root().mkdir(parents=True, exist_ok=True)
        lock = open(root() / f".{name}.lock", "a")
    except OSError as error:  # an unwritable cache: build as without one
        print(f"builtin cache: not used ({error})")
        return build()
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process is killed
        if _restored(entry, out):  # the other project built it while this one waited
            return None
        figures = build()
        _fill(entry, out)
    return figures


def _restored(entry: Path, out: str | Path) -> bool:
    """Copy a complete entry into out (a copy, not a link: DVC hashes and caches the project's copy)."""
    if not (entry / MARKER).is_file():
        return False
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(entry, out, ignore=shutil.ignore_patterns(MARKER))
    print(f"{out}: from the builtin cache ({entry}), not built again")
    return True


def _fill(entry: Path, out: str | Path) -> None:
    """Copy out into a temporary directory in the cache, mark it complete, rename it into place. A cache
    that cannot be filled (a full disk) costs the next project a build, never this stage its result."""
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
        shutil.copytree(out, staging, dirs_exist_ok=True)
        (staging / MARKER).write_text(json.dumps({"machine": machine()}) + "\n")
        shutil.rmtree(entry, ignore_errors=True)  # a partial entry (no marker), under the lock
        os.rename(staging, entry)
        staging = None
    except OSError as error:
        print(f"builtin cache: {entry} not filled ({error})")
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)

