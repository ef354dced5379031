"""Loaded by every Python process of an audited run (tests/test_read_audit.py puts this folder on
PYTHONPATH): records which files inside the project the process opens for reading, and its argv, in
$SELFIMPROVE_AUDIT_DIR/<pid>.json when it exits."""

import atexit
import json
import os
import sys

_DIR = os.environ.get("SELFIMPROVE_AUDIT_DIR")
_ROOT = os.path.realpath(os.environ.get("SELFIMPROVE_AUDIT_ROOT", "/nonexistent"))
_READS: set = set()


def _hook(event, args):
    if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path, mode, flags = args
    writing = (mode is not None and any(c in mode for c in "wax+")) or (
        mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
    if writing:
        return
    full = os.path.realpath(os.fsdecode(path))
    # Only files: a directory opened to list or remove it reads no content (and a name relative to a
    # directory descriptor, as shutil.rmtree opens them, does not resolve here).
    if full.startswith(_ROOT + os.sep) and os.path.isfile(full) and "__pycache__" not in full:
        _READS.add(os.path.relpath(full, _ROOT))


def _write():
    with open(os.path.join(_DIR, f"{os.getpid()}.json"), "w") as f:
        json.dump({"argv": sys.argv, "reads": sorted(_READS)}, f)


if _DIR:
    sys.addaudithook(_hook)
    atexit.register(_write)
