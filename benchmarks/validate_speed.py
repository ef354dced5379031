"""How long `validate` takes per loop file (target: well under a second each), in process and as a command.

    python benchmarks/validate_speed.py [LOOP ...]    (default: loops/*.yaml and examples/*/*.yaml)

In process: load_loop with made_files=True, as `validate` calls it, best of 5 after one warm-up (what a
file costs once the package is imported). As a command: `selfimprove validate FILE` once per file, so
that Python's start and the imports count too. A file another step must make first (natural_reasoning_rm
before its reward model exists) is refused, and timed all the same.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def in_process(path: Path) -> float:
    from selfimprove.core.errors import UserError
    from selfimprove.loop.loopfile import load_loop

    best = float("inf")
    for attempt in range(6):
        started = time.perf_counter()
        try:
            load_loop(path, made_files=True)
        except UserError:
            pass
        if attempt:
            best = min(best, time.perf_counter() - started)
    return best


def as_command(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "selfimprove.cli", "validate", str(path)], cwd=ROOT, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]] or sorted(ROOT.glob("loops/*.yaml")) + sorted(ROOT.glob("examples/*/*.yaml"))
    print(f"{'loop file':48} {'in process':>11} {'command':>9}")
    rows = [(path, in_process(path), as_command(path)) for path in paths]
    for path, inside, command in rows:
        print(f"{str(path.relative_to(ROOT) if path.is_absolute() else path):48} {inside * 1000:9.1f} ms {command:7.2f} s")
    print(f"max in process {max(r[1] for r in rows) * 1000:.1f} ms, max as a command {max(r[2] for r in rows):.2f} s "
          f"({len(rows)} files)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
