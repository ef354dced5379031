"""The user-facing errors. A message says what is wrong and ends with the fix."""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """An error caused by input (a loop file, a flag, a workspace): shown as lines, never a traceback."""

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFull(UserError):
    """A write that failed because the disk (or a quota, or a file size limit) is full."""

    def __init__(self, what: str | Path, cause: BaseException | None = None):
        self.what, self.cause = str(what), cause
        super().__init__(f"no space left on device while writing {what}; free space there (df -h) and run "
                         f"again: finished stages and shards are kept")


def is_disk_full(error: BaseException, where: str | Path | None = None) -> bool:
    """Whether an exception, or one it was raised from, is a full disk. Some writers hide the errno
    (torch.save raises "file write failed", safetensors "os error 28"), so their messages count too, and
    so does any failed write while the filesystem of `where` has under 1 MiB free."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL:
            return True
        text = str(seen)
        if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    if where is not None and isinstance(error, (OSError, RuntimeError)):
        existing = Path(where)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            return shutil.disk_usage(existing).free < 2**20
        except OSError:
            return False
    return False


@contextmanager
def writing(what: str | Path, where: str | Path | None = None):
    """Turn a full disk while writing `what` (a shard, a model, a checkpoint; at the path `where`, by
    default `what` itself) into DiskFull naming it."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as error:
        if is_disk_full(error, where or what):
            raise DiskFull(what, error) from error
        raise
