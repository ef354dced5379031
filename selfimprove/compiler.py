"""Compile a loop into explicit per-iteration DVC stages (dvc.yaml) and their params (params.yaml).

Why explicit stages and not foreach/matrix: each iteration depends on the previous one through a plain
file dependency (its model), DVC runs them in order, and growing 3 -> 5 iterations marks only the new
stages as changed (see docs/dvc-notes.md). Stage names are `<run>-it<K>-<stage>`; the base model is
evaluated as iteration 0. Several runs share one dvc.yaml: compiling a loop replaces only its own stages.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

import selfimprove
from selfimprove.backends.config import tracked_keys
from selfimprove.config import Loop, judged, meta_judged, resolved_params, uses_judge
from selfimprove.judging import template_path
from selfimprove.settings import DATA_SETTINGS
from selfimprove.errors import UserError
from selfimprove.models import BUILTIN_GGUF, builtin_dir

STAGE_RE = re.compile(r"^(?P<run>.+)-it(?P<k>\d+)-(?P<stage>[a-z]+)$")
ITERATION_STAGES = ["generate", "vote", "pairs", "train", "evaluate"]
HEADER = "# Compiled by `selfimprove run` from loop files; edit the loop file, not this file.\n"


def stage_name(run: str, k: int, stage: str) -> str:
    return f"{run}-it{k}-{stage}"


def run_dir(run: str) -> str:
    return f"runs/{run}"


def iteration_dir(run: str, k: int) -> str:
    return f"runs/{run}/it{k}"


def _code(project: Path, stage_module: str) -> list[str]:
    """Every package module a stage imports, directly or not, found by reading import statements (no
    hand-kept list can forget one, and a dependency forgotten means an edit that does not re-run the
    stage). Paths are relative to the project when the package lives in it, absolute otherwise."""
    package = Path(selfimprove.__file__).resolve().parent
    paths = []
    for module in sorted(_imported_modules(f"selfimprove.{stage_module}")):
        paths.append(_relative(_module_file(package.parent, module), project))
    return paths


def _module_file(root: Path, module: str) -> Path:
    """selfimprove/x.py for a module, selfimprove/x/__init__.py for a package (which may not exist:
    `from selfimprove import data` names a module, not a package)."""
    path = root / f"{module.replace('.', '/')}.py"
    return path if path.exists() else root / module.replace(".", "/") / "__init__.py"


def _imported_modules(root: str) -> set[str]:
    """The package modules reachable from root through `import selfimprove...` / `from selfimprove... import`,
    including imports inside functions (the stages import lazily)."""
    package_dir = Path(selfimprove.__file__).resolve().parent.parent
    seen, todo = set(), [root]
    while todo:
        module = todo.pop()
        path = _module_file(package_dir, module)
        if module in seen or module == "selfimprove" or not path.exists():  # the root holds only a version
            continue
        seen.add(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selfimprove"):
                todo.append(node.module)
                todo.extend(f"{node.module}.{alias.name}" for alias in node.names)  # `from selfimprove import data`
            elif isinstance(node, ast.Import):
                todo.extend(alias.name for alias in node.names if alias.name.startswith("selfimprove"))
    return seen


def base_model(loop: Loop) -> tuple[str, bool]:
    """(the model iteration 1 starts from, whether it is a file dependency)."""
    if loop.start_from:
        run, k = loop.start_from.split("@")
        return (f"{iteration_dir(run, int(k))}/model" if int(k) > 0 else _base_of_other(run)), True
    local = builtin_dir(loop.model)
    if local:
        return local, True
    return loop.model, Path(loop.model).is_dir()  # a hub id is params (id + revision), never hashed


def _base_of_other(run: str) -> str:
    raise UserError(f"from: {run}@0 is the base model of {run}; start from its model reference instead "
                    f"(model: ...), or from {run}@1 or later")


def _data_params(run: str, other_side: str) -> list[str]:
    """The data keys a stage reads, one by one, so that changing the eval set never re-runs generation
    and changing the prompts never re-runs the base model's evaluation."""
    unused = {other_side, f"{other_side}_size"}
    return [f"{run}.data.{key}" for key in DATA_SETTINGS if key not in unused]


def _backend_params(loop: Loop) -> list[str]:
    """The backend keys every sampling stage tracks, so that switching backends re-runs what samples."""
    return [f"{loop.name}.{key}" for key in tracked_keys(loop)]


def compile_stages(loop: Loop, project: Path) -> dict[str, dict]:
    run, params = loop.name, "params.yaml"
    stages: dict[str, dict] = {}
    adapter_bases: dict[str, list[str]] = {}
    model, model_is_dep = base_model(loop)
    data_deps = [loop.data[k] for k in ("prompts", "eval") if Path(project, loop.data[k]).is_file()]
    for k in range(0, loop.iterations + 1):
        out = iteration_dir(run, k)
        if k > 0:
            prev_deps = [model] if model_is_dep else []
            stages[stage_name(run, k, "generate")] = {
                "cmd": f"python -m selfimprove.stages.generate --params {params} --run {run} --iteration {k} "
                       f"--model {model} --out {out}/samples.jsonl --stats {out}/generate.json",
                "deps": _code(project, "stages.generate")
                        + [d for d in data_deps if d == loop.data["prompts"]] + prev_deps,
                "params": [f"{run}.it{k}.generate"] + _data_params(run, "eval") + ([f"{run}.model_revision"] if k == 1 else [])
                          + _backend_params(loop),
                "outs": [f"{out}/samples.jsonl"],
                "metrics": [{f"{out}/generate.json": {"cache": False}}],
            }
            judge_pairs = []
            if judged(loop.per_iteration[k]):
                stages[stage_name(run, k, "judge")] = _judge_stage(loop, project, k, model, model_is_dep)
                scored = f"{out}/judgements.jsonl"
                if meta_judged(loop.per_iteration[k]):
                    stages[stage_name(run, k, "metajudge")] = _metajudge_stage(loop, project, k, model, model_is_dep)
                    judge_pairs = [f"{out}/judge_pairs.jsonl"]
            else:
                stages[stage_name(run, k, "vote")] = {
                    "cmd": f"python -m selfimprove.stages.vote --samples {out}/samples.jsonl --out {out}/votes.jsonl",
                    "deps": _code(project, "stages.vote") + [f"{out}/samples.jsonl"],
                    "outs": [f"{out}/votes.jsonl"],
                }
                scored = f"{out}/votes.jsonl"
            stages[stage_name(run, k, "pairs")] = {
                "cmd": f"python -m selfimprove.stages.pairs --params {params} --run {run} --iteration {k} "
                       f"--scored {scored} --out {out}/pairs.jsonl --stats {out}/pairs.json"
                       + "".join(f" --judge-pairs {path}" for path in judge_pairs),
                "deps": _code(project, "stages.pairs") + [scored] + judge_pairs,
                "params": [f"{run}.it{k}.pairs"],
                "outs": [f"{out}/pairs.jsonl"],
                "metrics": [{f"{out}/pairs.json": {"cache": False}}],
            }
            train = loop.per_iteration[k]["train"]
            stages[stage_name(run, k, "train")] = {
                "cmd": f"{train_launcher(train)} -m selfimprove.stages.train --params {params} --run {run} "
                       f"--iteration {k} --model {model} --pairs {out}/pairs.jsonl --out {out}/model",
                "deps": _code(project, "stages.train") + [f"{out}/pairs.jsonl"] + prev_deps
                        + ([train["accelerate_config"]] if train["accelerate_config"] else []),
                "params": [f"{run}.it{k}.train"] + ([f"{run}.model_revision"] if k == 1 else []),
                "outs": [f"{out}/model"],
            }
            if train["lora_r"]:  # the output is an adapter: loading it needs the model it was trained on
                adapter_bases[f"{out}/model"] = [model] if model_is_dep else []
            model, model_is_dep = f"{out}/model", True
        stages[stage_name(run, k, "evaluate")] = _evaluate_stage(loop, project, k, model, model_is_dep, data_deps)
    iterations = range(0, loop.iterations + 1)
    stages[report_name(run)] = {
        "cmd": f"python -m selfimprove.stages.report --run-dir {run_dir(run)} --iterations {loop.iterations} "
               f"--out {run_dir(run)}/metrics.json",
        "deps": _code(project, "stages.report") + [f"{iteration_dir(run, k)}/metrics.json" for k in iterations]
                + [f"{iteration_dir(run, k)}/pairs.json" for k in iterations if k > 0]
                + [f"{iteration_dir(run, k)}/generate.json" for k in iterations if k > 0]
                + [f"{iteration_dir(run, k)}/judge.json" for k in iterations if k > 0 and judged(loop.per_iteration[k])]
                + [f"{iteration_dir(run, k)}/metajudge.json" for k in iterations
                   if k > 0 and meta_judged(loop.per_iteration[k])],
        "metrics": [{f"{run_dir(run)}/metrics.json": {"cache": False}}],
    }
    return _with_adapter_bases(stages, adapter_bases)


def train_launcher(settings: dict) -> str:
    """How the train stage starts. One process: `python`, the command every loop compiled to before
    multi-process training existed. Otherwise `accelerate launch`: --multi_gpu is its torchrun
    launcher (on a machine without GPUs the stage's use_cpu makes that gloo processes on the CPU;
    --cpu would start one process), and a config file (DeepSpeed, FSDP) is passed through unchanged
    and decides the distributed type itself. `processes` always wins over the file's num_processes,
    since it sets the global batch (batch_size * grad_accum * processes)."""
    if settings["processes"] == 1 and not settings["accelerate_config"]:
        return "python"
    flags = [f"--num_processes {settings['processes']}"]
    flags.append(f"--config_file {settings['accelerate_config']}" if settings["accelerate_config"] else "--multi_gpu")
    if settings["mixed_precision"] != "auto":
        flags.append(f"--mixed_precision {settings['mixed_precision']}")
    return "accelerate launch " + " ".join(flags)


def _with_adapter_bases(stages: dict[str, dict], adapter_bases: dict[str, list[str]]) -> dict[str, dict]:
    """A LoRA iteration's model directory holds an adapter; loading it merges it into the model it was
    trained on (recorded in its adapter_config.json), which may be an adapter too. So every stage that
    depends on an adapter directory also depends on the whole chain of directories under it."""
    def chain(path: str) -> list[str]:
        return [d for base in adapter_bases.get(path, []) for d in [base] + chain(base)]

    for stage in stages.values():
        extra = [d for dep in stage["deps"] for d in chain(dep) if d not in stage["deps"]]
        if extra:
            stage["deps"] = stage["deps"] + list(dict.fromkeys(extra))
    return stages


def _evaluate_stage(loop: Loop, project: Path, k: int, model: str, model_is_dep: bool, data_deps: list[str]) -> dict:
    """Evaluation of iteration k. With evaluate.win_rate_size, every iteration writes its greedy outputs
    and iterations k >= 1 meet iteration 0's, judged by the loop's base model (a fixed judge)."""
    run, out = loop.name, iteration_dir(loop.name, k)
    stage = {
        "cmd": f"python -m selfimprove.stages.evaluate --params params.yaml --run {run} --iteration {k} "
               f"--model {model} --out {out}/metrics.json",
        "deps": _code(project, "stages.evaluate")
                + [d for d in data_deps if d == loop.data["eval"]] + ([model] if model_is_dep else []),
        "params": [f"{run}.it{k}.evaluate"] + ([f"{run}.it{k}.judge"] if uses_judge(loop) else [])
                  + _data_params(run, "prompts") + ([f"{run}.model_revision"] if k == 0 else [])
                  + _backend_params(loop),
        "metrics": [{f"{out}/metrics.json": {"cache": False}}],
    }
    if loop.per_iteration[max(k, 1)]["evaluate"]["win_rate_size"] and uses_judge(loop):
        stage["cmd"] += f" --outputs {out}/outputs.jsonl"
        stage["outs"] = [f"{out}/outputs.jsonl"]
        if k > 0:
            base, base_is_dep = base_model(loop)
            base_outputs = f"{iteration_dir(run, 0)}/outputs.jsonl"
            stage["cmd"] += f" --base-outputs {base_outputs} --win-judge {base}"
            stage["deps"] += [base_outputs] + ([base] if base_is_dep and base != model else [])
            if f"{run}.model_revision" not in stage["params"]:
                stage["params"].append(f"{run}.model_revision")
    return stage


def _judge_stage(loop: Loop, project: Path, k: int, policy: str, policy_is_dep: bool) -> dict:
    """Judge iteration k's samples with the policy that wrote them (source: self) or another model."""
    run, out, settings = loop.name, iteration_dir(loop.name, k), loop.per_iteration[k]["judge"]
    if settings["source"] == "self":
        judge_model, judge_is_dep = policy, policy_is_dep
    elif settings["source"] == "openai":  # a server: its endpoint and model name are params
        judge_model, judge_is_dep = "openai", False
    else:
        judge_model, judge_is_dep = settings["source"], Path(project, settings["source"]).is_dir()
    template = template_path(settings["template"])
    return {
        "cmd": f"python -m selfimprove.stages.judge --params params.yaml --run {run} --iteration {k} "
               f"--model {judge_model} --samples {out}/samples.jsonl --out {out}/judgements.jsonl "
               f"--stats {out}/judge.json",
        "deps": _code(project, "stages.judge") + [f"{out}/samples.jsonl"] + ([judge_model] if judge_is_dep else [])
                + ([_relative(template, project)] if template else []),
        "params": [f"{run}.it{k}.judge"] + ([f"{run}.model_revision"] if k == 1 else []) + _backend_params(loop),
        "outs": [f"{out}/judgements.jsonl"],
        "metrics": [{f"{out}/judge.json": {"cache": False}}],
    }


def _metajudge_stage(loop: Loop, project: Path, k: int, policy: str, policy_is_dep: bool) -> dict:
    """The policy, as meta-judge, compares its own judgements of iteration k's samples."""
    run, out = loop.name, iteration_dir(loop.name, k)
    template = template_path(loop.per_iteration[k]["metajudge"]["template"])
    return {
        "cmd": f"python -m selfimprove.stages.metajudge --params params.yaml --run {run} --iteration {k} "
               f"--model {policy} --judgements {out}/judgements.jsonl --out {out}/judge_pairs.jsonl "
               f"--stats {out}/metajudge.json",
        "deps": _code(project, "stages.metajudge") + [f"{out}/judgements.jsonl"] + ([policy] if policy_is_dep else [])
                + ([_relative(template, project)] if template else []),
        "params": [f"{run}.it{k}.metajudge", f"{run}.it{k}.judge"] + ([f"{run}.model_revision"] if k == 1 else [])
                  + _backend_params(loop),
        "outs": [f"{out}/judge_pairs.jsonl"],
        "metrics": [{f"{out}/metajudge.json": {"cache": False}}],
    }


def _relative(path: Path, project: Path) -> str:
    try:
        return str(path.resolve().relative_to(project.resolve()))
    except ValueError:
        return str(path.resolve())


def report_name(run: str) -> str:
    return f"{run}-report"


def bootstrap_stage(loop: Loop, project: Path) -> dict[str, dict]:
    local = builtin_dir(loop.model)
    if not local or loop.start_from:
        return {}
    name = loop.model.split(":", 1)[1]
    builder = "convert" if name in BUILTIN_GGUF else "bootstrap"
    return {f"bootstrap-{name}": {
        "cmd": f"python -m selfimprove.stages.{builder} --params params.yaml --section builtin.{name} --out {local}",
        "deps": _code(project, f"stages.{builder}"),
        "params": [f"builtin.{name}"],
        "outs": [local],
    }}


def compile_loop(loop: Loop, project: Path, existing_stages: dict | None = None,
                 existing_params: dict | None = None) -> tuple[dict, dict]:
    """(dvc.yaml content, params.yaml content) with this loop's stages replacing its old ones."""
    stages = {name: stage for name, stage in (existing_stages or {}).items() if not _belongs_to(name, loop.name)}
    stages.update(bootstrap_stage(loop, project))
    stages.update(compile_stages(loop, project))
    params = dict(existing_params or {})
    params[loop.name] = resolved_params(loop)
    local = builtin_dir(loop.model)
    if local and not loop.start_from:
        name = loop.model.split(":", 1)[1]
        params.setdefault("builtin", {})[name] = dict(BUILTIN_GGUF.get(name) or loop.bootstrap)
    return {"stages": stages}, params


def _belongs_to(stage: str, run: str) -> bool:
    match = STAGE_RE.match(stage)
    return bool(match and match.group("run") == run) or stage == report_name(run)


def dump(document: dict) -> str:
    return yaml.safe_dump(document, sort_keys=False, width=120, default_flow_style=False)


def write(project: Path, loop: Loop) -> list[str]:
    """Update dvc.yaml and params.yaml in the project; return this loop's stage names in order (its
    bootstrap stage included)."""
    dvc_path, params_path = project / "dvc.yaml", project / "params.yaml"
    existing = yaml.safe_load(dvc_path.read_text()) if dvc_path.exists() else {}
    existing_params = yaml.safe_load(params_path.read_text()) if params_path.exists() else {}
    document, params = compile_loop(loop, project, (existing or {}).get("stages"), existing_params or {})
    _write_if_changed(dvc_path, HEADER + dump(document))
    _write_if_changed(params_path, HEADER + dump(params))
    own = set(bootstrap_stage(loop, project))
    return [name for name in document["stages"] if name in own or _belongs_to(name, loop.name)]


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)

