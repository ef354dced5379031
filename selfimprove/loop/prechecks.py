"""Checks at validate that look outside the loop file: what a run would otherwise meet late or never.

- Text the model cannot represent: prompts (a bounded prefix of the data file, in its prompt template)
  whose characters a builtin model's vocabulary lacks, or that a local model's tokenizer maps to its
  unknown token, reach the model as `<unk>` and nothing says so. More than MAX_UNKNOWN of them is refused.
- A path under runs/ that another step makes (a reward model a script trains, another loop's
  iteration): missing, the run would bootstrap first and fail later. Refused with the command that
  makes it, read from the loop file's `# Run:` header lines.

Both read files only, and never import torch (validate stays fast).
"""

from __future__ import annotations

import re
from pathlib import Path

from selfimprove.core.registry import UnknownName, resolve
from selfimprove.tasks.datafile import question_prefix

MAX_UNKNOWN = 0.2  # a share of the prompts' characters (tokens) the model cannot read
# The header's `# Run:` line and its continuation lines (indented under it), each a command and a comment.
RUN_LINE = re.compile(r"^#\s*Run:\s+(?P<command>\S.*?)\s*(?:#.*)?$")
MORE_LINE = re.compile(r"^#\s{4,}(?P<command>\S.*?)\s*(?:#.*)?$")


def check_vocabulary(model: str, bootstrap: dict, data: dict, problems) -> None:
    """Refuse prompts that the model would mostly read as its unknown token."""
    for side in ("prompts", "eval"):
        spec = data.get(side)
        if not isinstance(spec, str):
            continue
        texts = [data["prompt_template"].replace("{question}", q)
                 for q in question_prefix(spec, data["question_field"])]
        if not texts:
            continue
        found = _unknown_share(model, bootstrap, texts)
        if found and found[0] > MAX_UNKNOWN:
            share, what = found
            problems.add(("data", side), f"{spec}: {share:.0%} of the {what} of its first {len(texts)} prompts "
                         f"(in data.prompt_template) are outside {model}'s vocabulary and would reach it as its "
                         "unknown token; use a model that reads this text, or data in its alphabet")


def _unknown_share(model: str, bootstrap: dict, texts: list[str]) -> tuple[float, str] | None:
    """(share unknown, of what) for a builtin bootstrapped from a task's alphabet, or a local model
    directory with a tokenizer.json and an unknown token (loaded with `tokenizers`: no torch); None
    where the vocabulary is not known cheaply (a converted builtin, a hub id, a byte-level tokenizer)."""
    if model.startswith("builtin:"):
        try:
            builtin = resolve("builtin model", model.split(":", 1)[1])
            if not builtin.checked or "task" not in bootstrap:
                return None
            task = resolve("builtin task", bootstrap["task"])
        except UnknownName:
            return None
        alphabet = set(task.chars(bootstrap) if callable(task.chars) else task.chars)
        characters = "".join(texts)
        return sum(c not in alphabet for c in characters) / max(len(characters), 1), "characters"
    tokenizer_file = Path(model) / "tokenizer.json"
    if not tokenizer_file.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception:  # noqa: BLE001 - a tokenizer `tokenizers` cannot read: transformers may; not ours to judge
        return None
    unknown = getattr(tokenizer.model, "unk_token", None)
    unknown_id = tokenizer.token_to_id(unknown) if unknown else None
    if unknown_id is None:
        return None
    ids = [i for encoding in tokenizer.encode_batch(texts, add_special_tokens=False) for i in encoding.ids]
    return sum(i == unknown_id for i in ids) / max(len(ids), 1), "tokens"


def check_made_paths(loop_file: Path, name: str, model: str, per_iteration: dict, pipelines: dict,
                     problems) -> None:
    """Refuse a setting naming a missing path under runs/ that neither this loop nor its builtin makes."""
    own = (f"runs/{name}/", f"runs/builtin/{model.removeprefix('builtin:')}")
    reported = set()
    for k, settings in per_iteration.items():
        for stage in pipelines.get(k, []):
            for key, value in (settings.get(stage) or {}).items():
                path = value.removeprefix("./") if isinstance(value, str) else ""
                if not path.startswith("runs/") or path.startswith(own) or Path(path).exists():
                    continue
                if (stage, key) not in reported:
                    reported.add((stage, key))
                    problems.add(("stages", stage, key), f"{path} does not exist: another step makes it; "
                                 f"{_maker(loop_file)}, then validate again")


def _maker(loop_file: Path) -> str:
    """The first command of the loop file's `# Run:` header that is not `selfimprove run` (the step that
    makes what the loop reads), or a generic hint."""
    try:
        lines = loop_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    inside = False
    for line in lines:
        if not line.startswith("#"):
            break
        match = RUN_LINE.match(line) or (MORE_LINE.match(line) if inside else None)
        if inside and not match:
            break
        inside = inside or bool(match)
        if match and not match["command"].startswith("selfimprove run"):
            return f"run `{match['command']}` first (the loop file's Run: line)"
    return "make it first (a script or another loop's run), or fix the path"
