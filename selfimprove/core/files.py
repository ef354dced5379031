"""Writing a file whole or not at all: the one atomic writer every stage, backend and runner uses.

The text goes to a temporary file in the same directory (so the rename never crosses filesystems) and is
renamed over the target once complete: a killed process or a full disk never leaves half a file that a
later reader (DVC, the runner, a rerun reusing shards) would take for a whole one. None of the writers
fsyncs: a power cut is not a fault this tool recovers from, a kill or a full disk is.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from selfimprove.core.errors import writing


@contextmanager
def atomic_file(path: str | Path, tmp_suffix: str = ".tmp", encoding: str | None = None):
    """A text file written to `path` + `tmp_suffix` and renamed over `path` once complete. A failed write
    removes the temporary file; a full disk raises DiskFull naming `path`. Writers that may race on the
    same path (threads) pass a suffix of their own; DVC's folders get one DVC never uses itself."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + tmp_suffix)
    with writing(path):
        try:
            with open(tmp, "w", encoding=encoding) as f:
                yield f
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_text(path: str | Path, text: str, tmp_suffix: str = ".tmp", encoding: str | None = None) -> None:
    """Write `text` to `path` atomically (see atomic_file)."""
    with atomic_file(path, tmp_suffix, encoding) as f:
        f.write(text)
