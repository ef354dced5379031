"""The loop files shipped with the package, for `selfimprove loops` and `selfimprove init`.

Their one source is the repository's loops/; the package reaches it as selfimprove/shipped/loops (a link
in a checkout, the files themselves in the wheel). Files a loop names by a relative path (a labelled pair
set, the script that makes a reward model) ship at the same path under the package, so `init` can copy
them into a project where the loop finds them (selfimprove/shipped/examples/...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from selfimprove.core.errors import UserError
from selfimprove.core.registry import suggestion

RUN_LINE = re.compile(r"^#\s+(?:Run:)?\s+(python \S+|selfimprove \S.*?)\s*(?:#.*)?$")
RELATIVE_PATH = re.compile(r"^(?:examples|data|runs)/[\w./-]+$")


@dataclass(frozen=True)
class ShippedLoop:
    name: str
    method: str  # the header's first line: the method and its paper
    needs: tuple[str, ...]  # what the loop needs besides a model: gold answers, a judge, a reward ...
    model: str
    text: str

    def files(self) -> list[str]:
        """Project-relative paths the loop names: in its settings, and in its header's commands."""
        found = [value for value in _strings(yaml.safe_load(self.text)) if RELATIVE_PATH.match(value)]
        for line in self.text.splitlines():
            if (match := RUN_LINE.match(line)) and match[1].startswith("python "):
                found.append(match[1].split()[1])
        return list(dict.fromkeys(found))

    def prepare_commands(self) -> list[str]:
        """Commands the header says to run before `selfimprove run` (they make files the loop reads)."""
        return [m[1] for line in self.text.splitlines() if (m := RUN_LINE.match(line)) and m[1].startswith("python ")]


def package_root() -> Path:
    """What ships with the package besides its code: prompts, loops, the files loops name."""
    return Path(str(resources.files("selfimprove"))) / "shipped"


def loops_dir() -> Path:
    return package_root() / "loops"


def names() -> list[str]:
    return sorted(path.stem for path in loops_dir().glob("*.yaml"))


def shipped(name: str) -> ShippedLoop:
    """A shipped loop by name (scpo, or scpo.yaml); an unknown name gets the nearest one."""
    name = name.removesuffix(".yaml")
    if name not in names():
        raise UserError(f"no shipped loop {name!r}; {suggestion(name, names())} (selfimprove loops lists them)")
    text = (loops_dir() / f"{name}.yaml").read_text()
    raw = yaml.safe_load(text) or {}
    return ShippedLoop(name, _method(text), _needs(raw), str(raw.get("model", "")), text)


def _method(text: str) -> str:
    """The header's first line as "method (authors year)": ScPO: Self-Consistency ... (Prasad et al. 2024)."""
    first = text.splitlines()[0].lstrip("# ").rstrip(":.") if text else ""
    match = re.match(r"^(.*?)\s*\(([^)]*)\)", first)
    return f"{match[1]} ({match[2].split(', arXiv')[0]})" if match else first


def _needs(raw: dict) -> tuple[str, ...]:
    """What a loop needs, read from its settings (every iteration's, schedule included)."""
    sections = [raw.get("stages") or {}] + [s for s in (raw.get("schedule") or {}).values() if isinstance(s, dict)]
    pipeline = set(raw.get("pipeline") or []) | {stage for s in sections for stage in s if stage != "pipeline"}
    pipeline |= {stage for s in sections for stage in (s.get("pipeline") or [])}
    setting = lambda stage, key: next((s[stage][key] for s in sections if key in (s.get(stage) or {})), None)  # noqa: E731
    needs = []
    if setting("pairs", "rule") in ("gold", "semi_supervised") or setting("reward", "source") == "correct":
        needs.append("gold answers")
    if pipeline & {"judge", "metajudge", "pairjudge", "bsm", "diversity"}:
        needs.append(f"a judge ({setting('judge', 'source') or 'the policy'})")
    if "reward" in pipeline:
        source = str(setting("reward", "source") or "correct").rsplit(".", 1)[-1]  # a module:function: its name
        model = setting("reward", "model")
        needs.append(f"a reward model ({model})" if model else f"a reward ({source})")
    if setting("judge_eval", "pairs_file"):
        needs.append("labelled pairs (shipped)")
    return tuple(needs) or ("-",)


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []
