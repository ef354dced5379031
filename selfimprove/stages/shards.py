"""Resumable work inside a long stage: items processed in shards, each written to a scratch folder.

The folder is named by a fingerprint of everything the result depends on (settings, inputs, model
identity), so a rerun after a crash reuses every complete shard and a changed input never reuses a stale
one. Shards are written atomically (temporary file, then rename): a killed stage leaves no half shard.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

from selfimprove.stages.progress import Progress
from selfimprove.stages._io import read_jsonl, write_jsonl


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def run_in_shards(stage: str, items: list, shard_size: int, out: Path, key: str,
                  work: Callable[[list, int, Callable[[int], None]], list[dict]], unit: str = "prompts") -> tuple[list[dict], int]:
    """(rows of every shard in order, number of shards reused). work(shard, index, on_done) returns a
    shard's rows and may call on_done(items_done_in_shard) for the progress display."""
    scratch = scratch_dir(out) / key
    scratch.mkdir(parents=True, exist_ok=True)
    shards = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
    progress = Progress(stage, len(items), unit)
    reused = 0
    for index, shard in enumerate(shards):
        path = scratch / f"shard-{index:05d}.jsonl"
        if complete_shard(path):
            reused += 1
        else:
            done_before = index * shard_size
            write_jsonl(path, work(shard, index, lambda done: progress.update(done_before + done)))
        progress.update(min(len(items), (index + 1) * shard_size))
    rows = [row for index in range(len(shards)) for row in read_jsonl(scratch / f"shard-{index:05d}.jsonl")]
    return rows, reused


def complete_shard(path: Path) -> bool:
    """Whether a shard on disk can be reused: it exists and parses. Shards are written whole
    (write_jsonl), so this fails only for one damaged since (an edit, a disk error); such a shard is
    redone rather than ending the stage with a parse error."""
    try:
        return all(isinstance(row, dict) for row in read_jsonl(path))
    except (OSError, ValueError):
        return False


def scratch_dir(out: str | Path) -> Path:
    """The stage's scratch area beside its output: shards, and the OpenAI backend's response cache."""
    return Path(out).parent / f".{Path(out).stem}-shards"


def discard(out: Path) -> None:
    """Remove the scratch area once the stage output is written."""
    shutil.rmtree(scratch_dir(out), ignore_errors=True)
