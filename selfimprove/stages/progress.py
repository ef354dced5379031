"""Progress reporting from inside a stage to the `selfimprove run` display.

A stage runs as a DVC subprocess, so it cannot draw on the runner's screen. It writes a tiny JSON file
(path given by SELFIMPROVE_PROGRESS) that the runner polls; without a runner it prints a line now and then.
"""

from __future__ import annotations

import json
import os
import sys
import time

from selfimprove.core.errors import DiskFull
from selfimprove.core.files import write_text


class Progress:
    def __init__(self, stage: str, total: int, unit: str):
        self.stage, self.total, self.unit = stage, total, unit
        self.path = os.environ.get("SELFIMPROVE_PROGRESS")
        self.started = time.time()
        self.last_print = 0.0
        self.update(0)

    def update(self, done: int) -> None:
        now = time.time()
        if self.path:
            record = {"stage": self.stage, "done": done, "total": self.total, "unit": self.unit,
                      "started": self.started, "time": now}
            try:
                write_text(self.path, json.dumps(record))  # atomic: the runner never reads half a file
            except (OSError, DiskFull):  # the display only: the stage's own writes report a full disk
                pass
        elif now - self.last_print > 10 or done == self.total:
            self.last_print = now
            rate = done / max(now - self.started, 1e-9)
            print(f"[{self.stage}] {done}/{self.total} {self.unit} ({rate:.1f}/s)", file=sys.stderr, flush=True)
