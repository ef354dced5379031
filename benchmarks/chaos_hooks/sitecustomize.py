"""benchmarks/chaos.py's injected ENOSPC for the one write no timing can hit: DVC's rewrite of dvc.lock
(in place, see selfimprove/dvclock.py). On PYTHONPATH, in a process whose CHAOS_LOCK_WRITE names N, the
Nth open of dvc.lock for writing keeps half of what is written, then fails as a full disk does."""

import builtins, errno, io, os
_fail_at = int(os.environ.get("CHAOS_LOCK_WRITE", "0"))
_real_open, _count = builtins.open, [0]

class _HalfWritten(io.StringIO):
    def __init__(self, handle):
        super().__init__()
        self.handle = handle
    def close(self):
        if not self.closed:
            text = self.getvalue()
            self.handle.write(text[: len(text) // 2])
            self.handle.close()
            super().close()
            raise OSError(errno.ENOSPC, "No space left on device")
    def __exit__(self, *exc):
        self.close()

def _open(file, mode="r", *args, **kwargs):
    handle = _real_open(file, mode, *args, **kwargs)
    if _fail_at and str(file).endswith("dvc.lock") and "w" in mode:
        _count[0] += 1
        if _count[0] == _fail_at:
            return _HalfWritten(handle)
    return handle

if _fail_at:
    builtins.open = io.open = _open
