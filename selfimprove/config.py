"""Loop files: load, override, validate, resolve per iteration.

A loop file is data, loaded with PyYAML's safe loader (it never runs code). Validation collects every
problem at once; each one names file:line, the key path and the fix, e.g.

    loops/scpo.yaml:14: stages.generate.temprature: unknown key; did you mean 'temperature'?
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfimprove.backends.config import backend_params, check_backend, check_key_env
from selfimprove.errors import UserError
from selfimprove.schema import Problems, check_section, defaults, did_you_mean, key_lines, scalar
from selfimprove.settings import BOOTSTRAP_SETTINGS, DATA_SETTINGS, JUDGE_RULES, STAGE_SETTINGS

TOP_LEVEL = {"name", "description", "model", "model_revision", "data", "iterations", "seed",
             "bootstrap", "stages", "schedule", "from", "backend", "chat_template", "vllm", "openai"}
REQUIRED = ["name", "model", "data", "iterations"]
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
FROM_RE = re.compile(r"^([a-z][a-z0-9_-]*)@(\d+)$")


@dataclass
class Loop:
    """A validated loop: its raw settings and, per iteration, the resolved settings of every stage."""

    path: Path
    name: str
    model: str
    model_revision: str | None
    data: dict[str, Any]
    iterations: int
    bootstrap: dict[str, Any]
    start_from: str | None
    per_iteration: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    backend: str = "hf"
    chat_template: bool = False
    backend_settings: dict[str, Any] = field(default_factory=dict)  # the vllm: or openai: section, resolved


def parse_override(text: str) -> tuple[tuple, Any]:
    """Parse a --set KEY=VALUE. A stage name may stand alone: generate.n=16 means stages.generate.n=16."""
    if "=" not in text:
        raise UserError(f"--set {text}: expected KEY=VALUE, e.g. --set generate.n=16")
    key, raw = text.split("=", 1)
    path = tuple(scalar(part) for part in key.strip().split("."))
    if path[0] in STAGE_SETTINGS:
        path = ("stages",) + path
    return path, yaml.safe_load(raw) if raw.strip() else ""


def _apply_override(raw: dict, path: tuple, value: Any) -> None:
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {'.'.join(map(str, path))}: {part} is not a mapping in the loop file")
    node[path[-1]] = value


def load_loop(path: str | Path, overrides: list[str] = ()) -> Loop:
    """Load, override and validate a loop file; raise UserError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such loop file; the shipped ones are in loops/ (e.g. loops/scpo.yaml)")
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax there") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}:1: a loop file is a mapping with at least: {', '.join(REQUIRED)}")
    lines = key_lines(node) if node is not None else {}
    for text_override in overrides:
        _apply_override(raw, *parse_override(text_override))
    problems = Problems(str(path), lines)
    loop = _validate(raw, path, problems)
    if problems.items:
        raise UserError(*problems.items)
    return loop


def _validate(raw: dict, path: Path, problems: Problems) -> Loop | None:
    for key in raw:
        if key not in TOP_LEVEL:
            problems.add((key,), did_you_mean(key, TOP_LEVEL))
    for key in REQUIRED:
        if key not in raw:
            problems.add((), f"missing required key '{key}'; see loops/scpo.yaml for an example")
    name = raw.get("name", "")
    if "name" in raw and not (isinstance(name, str) and NAME_RE.match(name)):
        problems.add(("name",), f"{name!r} is not a run name; use lowercase letters, digits, '-' and '_', e.g. scpo")
    iterations = raw.get("iterations", 1)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        problems.add(("iterations",), f"expected a whole number >= 1, got {iterations!r}")
        iterations = 1
    start_from = raw.get("from")
    if start_from is not None and not (isinstance(start_from, str) and FROM_RE.match(start_from)):
        problems.add(("from",), f"expected RUN@K (e.g. scpo@2), got {start_from!r}")
    data = {**defaults(DATA_SETTINGS), **check_section(raw.get("data", {}), DATA_SETTINGS, ("data",), problems)}
    for key in ("prompts", "eval"):
        if not data.get(key):
            problems.add(("data",), f"missing data.{key}; e.g. data: {{prompts: builtin:arith/train, eval: builtin:arith/test}}")
    bootstrap = {**defaults(BOOTSTRAP_SETTINGS), **builtin_bootstrap(str(raw.get("model", ""))),
                 **check_section(raw.get("bootstrap", {}), BOOTSTRAP_SETTINGS, ("bootstrap",), problems)}
    base = _check_stages(raw.get("stages", {}), ("stages",), problems)
    per_iteration = {}
    schedule = raw.get("schedule") or {}
    if not isinstance(schedule, dict):
        problems.add(("schedule",), "must map an iteration number to stage overrides, e.g. 2: {pairs: {min_votes: 0.7}}")
        schedule = {}
    for key in schedule:
        # Entries past the last iteration are allowed, so `--set iterations=2` works on a 3-iteration loop.
        if isinstance(key, bool) or not isinstance(key, int) or key < 1:
            problems.add(("schedule", key), f"{key!r} is not an iteration number; use 1, 2, ...")
    for k in range(1, iterations + 1):
        override = _check_stages(schedule.get(k) or {}, ("schedule", k), problems) if k in schedule else {}
        per_iteration[k] = {stage: {**defaults(settings), **base.get(stage, {}), **override.get(stage, {})}
                            for stage, settings in STAGE_SETTINGS.items()}
    _check_values(per_iteration, problems)
    _check_openai(per_iteration, problems)
    _check_judge_mode(per_iteration, problems)
    backend, chat_template, backend_settings = check_backend(
        raw, any(reads_probabilities(stages) for stages in per_iteration.values()), problems)
    return Loop(path=path, name=name, model=str(raw.get("model", "")), model_revision=raw.get("model_revision"),
                data=data, iterations=iterations, bootstrap=bootstrap, start_from=start_from,
                per_iteration=per_iteration, backend=backend, chat_template=chat_template,
                backend_settings=backend_settings)


def _check_stages(stages: Any, path: tuple, problems: Problems) -> dict:
    if not isinstance(stages, dict):
        problems.add(path, "must map stage names to settings, e.g. generate: {n: 8}")
        return {}
    checked = {}
    for stage, values in stages.items():
        if stage not in STAGE_SETTINGS:
            problems.add(path + (stage,), did_you_mean(stage, STAGE_SETTINGS))
            continue
        checked[stage] = check_section(values or {}, STAGE_SETTINGS[stage], path + (stage,), problems, stage)
    return checked


def _check_values(per_iteration: dict, problems: Problems) -> None:
    """Range checks on resolved values; reported once per key, not once per iteration."""
    seen = set()
    rules = [
        ("generate", "n", lambda v: v >= 1, "must be >= 1"),
        ("generate", "temperature", lambda v: v >= 0, "must be >= 0 (0 means greedy)"),
        ("generate", "top_p", lambda v: 0 < v <= 1, "must be in (0, 1]"),
        ("pairs", "min_votes", lambda v: 0 <= v <= 1, "is a fraction of n; use a value in [0, 1], e.g. 0.5"),
        ("train", "lr", lambda v: v > 0, "must be > 0"),
        ("train", "beta", lambda v: v > 0, "must be > 0"),
        ("evaluate", "k", lambda v: v >= 1, "must be >= 1"),
        ("generate", "extra_n", lambda v: v >= 0, "must be >= 0 (0: no extra samples)"),
        ("pairs", "pairs_per_question", lambda v: v >= 1, "must be >= 1"),
        ("pairs", "labelled_fraction", lambda v: 0 <= v <= 1, "is a fraction of the questions; use a value in [0, 1]"),
        ("pairs", "rho", lambda v: 0 <= v <= 1, "is a length-control weight; use a value in [0, 1] (0: off)"),
        ("judge", "n", lambda v: v >= 1, "must be >= 1"),
        ("judge", "concurrency", lambda v: v >= 1, "must be >= 1"),
        ("judge", "max_failure_rate", lambda v: 0 <= v <= 1, "is a fraction; use a value in [0, 1]"),
        ("judge", "template", _template_exists, "is not a template: use additive, pairwise, tiny-arith or a path to "
                                                "a text file"),
        ("judge", "score_pattern", _one_group, "must be a regular expression with one group capturing the score, "
                                               "e.g. 'Score:\\s*(\\d+)'"),
        ("evaluate", "judge_size", lambda v: v >= 0, "must be >= 0 (0: off)"),
        ("evaluate", "win_rate_size", lambda v: v >= 0, "must be >= 0 (0: off)"),
        ("evaluate", "win_template", _template_exists, "is not a template: use pairwise or a path to a text file"),
        ("judge", "min_score_mass", lambda v: 0 <= v <= 1, "is a probability; use a value in [0, 1]"),
        ("judge", "prompt_template", lambda v: "{question}" in v, "must contain {question}, where the judge prompt "
                                                                    "goes, e.g. '<|im_start|>user\\n{question}<|im_end|>...'"),
        ("metajudge", "template", _template_exists, "is not a template: use meta, tiny-arith-meta or a path to a "
                                                    "text file"),
        ("metajudge", "winner_pattern", _one_group, "must be a regular expression with one group capturing A or B"),
        ("train", "processes", lambda v: v >= 1, "must be >= 1 (one per GPU; 1 runs without accelerate launch)"),
        ("train", "accelerate_config", lambda v: not v or Path(v).is_file(), "is not a file: give the path, from the "
                                                                            "project root, of an accelerate config "
                                                                            "file (`accelerate config --config_file "
                                                                            "F` writes one), or '' for none"),
        ("train", "lora_r", lambda v: v >= 0, "must be >= 0 (0: full fine-tuning)"),
        ("train", "lora_r", lambda v: v == 0 or _peft_installed(), "needs peft: pip install 'selfimprove[lora]', "
                                                                   "or set lora_r: 0 for full fine-tuning"),
        ("train", "lora_alpha", lambda v: v >= 1, "must be >= 1 (the update is scaled by lora_alpha / lora_r)"),
        ("train", "lora_dropout", lambda v: 0 <= v < 1, "is a probability; use a value in [0, 1)"),
    ]
    for k, stages in per_iteration.items():
        for stage, key, ok, message in rules:
            if (stage, key) not in seen and not ok(stages[stage][key]):
                seen.add((stage, key))
                problems.add(("stages", stage, key), f"{stages[stage][key]!r} {message}")


def _check_openai(per_iteration: dict, problems: Problems) -> None:
    """An OpenAI-compatible judge needs its endpoint and model; a key goes in the environment, never here."""
    for stages in per_iteration.values():
        judge = stages["judge"]
        if judge["source"] != "openai":
            continue
        for key, example in (("endpoint", "http://localhost:8000/v1"), ("api_model", "meta-llama/Llama-3.1-70B-Instruct")):
            if not judge[key]:
                problems.add(("stages", "judge", key), f"judge.source openai needs judge.{key}, e.g. {example}")
        check_key_env(judge["api_key_env"], ("stages", "judge", "api_key_env"), problems)
        return


def _check_judge_mode(per_iteration: dict, problems: Problems) -> None:
    """Modes other than generate read a local model's token probabilities; mode expected writes no
    judgement text for a meta-judge to compare."""
    for stages in per_iteration.values():
        mode = stages["judge"]["mode"]
        if mode != "generate" and stages["judge"]["source"] == "openai":
            problems.add(("stages", "judge", "mode"), f"{mode} reads a local model's token probabilities; with "
                         "judge.source openai use mode generate")
            return
        if mode == "expected" and meta_judged(stages):
            problems.add(("stages", "judge", "mode"), "expected writes no judgements for the meta-judge to compare; "
                         "use generate or generate_then_expected, or set pairs.judge_pairs: false")
            return


def _template_exists(name: str) -> bool:
    from selfimprove.judging import template_path

    path = template_path(name)
    return path is None or path.is_file()


def _peft_installed() -> bool:
    """Whether peft can be imported, without importing it (validation never imports torch)."""
    import importlib.util

    return importlib.util.find_spec("peft") is not None


def _one_group(pattern: str) -> bool:
    try:
        return re.compile(pattern).groups == 1
    except re.error:
        return False


def builtin_bootstrap(model: str) -> dict:
    """The bootstrap defaults a builtin model sets (the judging variant trains on judge examples)."""
    from selfimprove.models import BUILTIN_BOOTSTRAP

    return dict(BUILTIN_BOOTSTRAP.get(model.removeprefix("builtin:"), {})) if model.startswith("builtin:") else {}


def uses_judge(loop: Loop) -> bool:
    return any(stages["pairs"]["rule"] in JUDGE_RULES for stages in loop.per_iteration.values())


def judged(stages: dict) -> bool:
    return stages["pairs"]["rule"] in JUDGE_RULES


def meta_judged(stages: dict) -> bool:
    return judged(stages) and stages["pairs"]["judge_pairs"]


def reads_probabilities(stages: dict) -> bool:
    """Whether an iteration reads a judge's token probabilities (a prefilled `Score: ` or `Winner: `)."""
    if not judged(stages):
        return False
    return (stages["judge"]["mode"] != "generate" or (meta_judged(stages) and stages["metajudge"]["mode"] == "expected"))


def resolved_params(loop: Loop) -> dict:
    """The params a compiled run tracks in params.yaml: one section per iteration and stage (the judge's
    only in loops that judge), and the backend's settings where the loop chooses one."""
    params = {"model": loop.model, "model_revision": loop.model_revision, "data": copy.deepcopy(loop.data),
              **backend_params(loop)}
    meta = any(meta_judged(stages) for stages in loop.per_iteration.values())
    keep = [s for s in STAGE_SETTINGS if (s != "judge" or uses_judge(loop)) and (s != "metajudge" or meta)]
    for k, stages in loop.per_iteration.items():
        params[f"it{k}"] = {stage: copy.deepcopy(stages[stage]) for stage in keep}
    # Iteration 0 is the base model; only its evaluation runs, with iteration 1's settings.
    params["it0"] = {stage: copy.deepcopy(loop.per_iteration[1][stage]) for stage in ("evaluate", "judge")
                     if stage in keep}
    return params
