"""Checking a model reference at `validate` time, without loading it (no torch, no network): what
selfimprove.models.load and the reward model's loader will be given.

- builtin:<name>: a registered builtin (with "did you mean"); `builtins:tiny-arith` is caught too.
- a local directory: it exists and holds a model (config.json, a LoRA adapter or a temperature head),
  and a tokenizer where the stage loads one.
- a hub id: looked up in the local hub cache; with HF_HUB_OFFLINE set it must be there, otherwise a
  note says it will be downloaded on first use.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from selfimprove.core.errors import UserError

MODEL_FILES = ("config.json", "adapter_config.json", "temperature_head.json")  # whole model, LoRA, head
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # name or org/name
BUILTIN_PREFIX = "builtin:"


def check_model(value: str, reads=None, where: str = "model") -> str | None:
    """Raise UserError for a reference that cannot load; return a note for one that is not here yet (a
    hub id to download), else None."""
    if value.startswith(BUILTIN_PREFIX):
        _check_builtin(value)
        return None
    scheme, colon, rest = value.partition(":")
    if colon and "/" not in scheme and not Path(value).exists():
        close = difflib.get_close_matches(scheme + ":", [BUILTIN_PREFIX], n=1, cutoff=0.6)
        hint = (f"did you mean {BUILTIN_PREFIX}{rest}?" if close else
                "name a builtin (builtin:tiny-arith), a model directory or a hub id (org/name)")
        raise UserError(f"{value}: not a model reference; {hint}")
    path = Path(value).expanduser()
    if path.exists() or _looks_local(value):
        _check_directory(path, value, tokenizer=getattr(reads, "tokenizer", True))
        return None
    if not HUB_ID.match(value):
        raise UserError(f"{value}: no such model directory, and not a hub id (org/name); fix the path (it is "
                        "relative to the project directory)")
    return _check_hub(value)


def _check_builtin(value: str) -> None:
    from selfimprove.core.registry import UnknownName, resolve

    try:
        resolve("builtin model", value[len(BUILTIN_PREFIX):])
    except UnknownName as error:
        raise UserError(f"{value}: {error}") from None


def _looks_local(value: str) -> bool:
    """A path, not a hub id: relative to here or home, absolute, or deeper than org/name."""
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or "\\" in value


def _check_directory(path: Path, value: str, tokenizer: bool) -> None:
    if not path.exists():
        raise UserError(f"{value}: no such model directory (paths are relative to the project directory); "
                        "fix the path, or give a builtin or a hub id")
    if not path.is_dir():
        raise UserError(f"{value}: a file, not a model directory; give the directory save_pretrained wrote")
    if not any((path / name).is_file() for name in MODEL_FILES):
        raise UserError(f"{value}: holds no model (no config.json); give the directory save_pretrained wrote "
                        "(config.json and the weights)")
    if tokenizer and (path / "config.json").is_file() and not any((path / n).is_file() for n in TOKENIZER_FILES):
        raise UserError(f"{value}: holds a model but no tokenizer (no tokenizer.json or tokenizer_config.json); "
                        "save the tokenizer beside it (tokenizer.save_pretrained(directory))")


def _check_hub(value: str) -> str | None:
    if _in_hub_cache(value):
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UserError(f"{value}: not in the local hub cache, and HF_HUB_OFFLINE is set; download it where there "
                        f"is network (huggingface-cli download {value}) or give a local model directory")
    return (f"{value}: no such local directory and not in the local hub cache, so it will be downloaded from the "
            "hub on first use (if it is a path, fix it)")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # transformers brings it; without it there is no cache to look in
        return False
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id or cache: not found here, as the loader will say
        return False
