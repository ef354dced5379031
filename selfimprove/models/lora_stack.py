"""A chain of LoRA iterations as one adapter on the chain's root, for a server that applies one adapter
to its base (the warm engine, selfimprove.pipeline.engine_broker).

Iteration k of a LoRA loop trains an adapter on the model of iteration k - 1, itself the root plus the
merged updates before it, so iteration K's weights are

    W_K = W_0 + s_1 B_1 A_1 + ... + s_K B_K A_K            (s_k: adapter k's scaling, alpha / r)
        = W_0 + [s_1 B_1 | ... | s_K B_K] [A_1; ...; A_K]

an exact LoRA of rank r_1 + ... + r_K with its scaling folded into B: the stacked adapter says
lora_alpha = r, so the server scales it by 1. A module some adapter of the chain does not wrap gets
zero rows and columns there, so every module has the same rank (vLLM takes one rank per adapter).
Adapters peft can merge but this sum does not describe (DoRA, trained biases, embeddings, whole
modules saved beside the adapter, per-module ranks) are Unstackable: the caller serves the merged
model another way.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from selfimprove.models import ADAPTER_CONFIG, is_adapter

WEIGHTS = "adapter_model.safetensors"
LEGACY_WEIGHTS = "adapter_model.bin"
PREFIX = "base_model.model."
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"


class Unstackable(Exception):
    """The chain cannot be served as one adapter; the message says why."""


def chain(reference: str, project: str | Path = ".") -> tuple[str, str | None, list[str]]:
    """(the root: the first whole model under the reference, its revision, the adapters from the root up).
    A reference that is not an adapter is its own root with no adapters. Adapters record their base as the
    stage saw it, relative to the project: local paths come back absolute."""
    adapters, revision = [], None
    reference = _absolute(str(reference), project)
    while is_adapter(reference):
        adapters.append(reference)
        config = _config(reference)
        reference, revision = _absolute(config["base_model_name_or_path"], project), config.get("revision")
    return reference, revision, adapters[::-1]


def _absolute(reference: str, project: str | Path) -> str:
    local = Path(project) / reference
    return str(local.resolve()) if local.exists() else reference


def stacked_rank(adapters: list[str]) -> int:
    return sum(int(_config(adapter)["r"]) for adapter in adapters)


def stack(adapters: list[str], root: str, target: str | Path) -> Path:
    """Write the chain's adapters (root first) as one adapter on `root` to `target` (atomically: a killed
    write leaves no adapter that looks whole); return target. Reused when already written."""
    import torch
    from safetensors.torch import save_file

    target = Path(target)
    if (target / WEIGHTS).is_file():
        return target
    parts = [(_config(adapter), _weights(adapter)) for adapter in adapters]
    for adapter, (config, weights) in zip(adapters, parts):
        _check_stackable(adapter, config, weights)
    modules = sorted({key[:-len(A_SUFFIX)] for _, weights in parts for key in weights if key.endswith(A_SUFFIX)})
    stacked = {}
    for module in modules:
        a_rows, b_columns = [], []
        for config, weights in parts:
            a, b = weights.get(module + A_SUFFIX), weights.get(module + B_SUFFIX)
            if a is None:  # this adapter did not wrap the module: it adds nothing there
                shape = _shape_of(module, parts)
                a_rows.append(torch.zeros(config["r"], shape[1]))
                b_columns.append(torch.zeros(shape[0], config["r"]))
                continue
            a_rows.append(a.float())
            b_columns.append(b.float() * scaling(config))
        stacked[module + A_SUFFIX] = torch.cat(a_rows, dim=0).contiguous()
        stacked[module + B_SUFFIX] = torch.cat(b_columns, dim=1).contiguous()
    rank = sum(int(config["r"]) for config, _ in parts)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(stacked, partial / WEIGHTS)
    (partial / ADAPTER_CONFIG).write_text(json.dumps(stacked_config(parts[-1][0], root, rank, modules), indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


def scaling(config: dict) -> float:
    """How peft scales an adapter's B A: alpha / r, or alpha / sqrt(r) with rank-stabilised LoRA."""
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def stacked_config(top: dict, root: str, rank: int, modules: list[str]) -> dict:
    """peft's adapter_config.json for the stacked adapter: rank `rank`, scaling 1 (alpha = r), on root."""
    return {"peft_type": "LORA", "task_type": top.get("task_type") or "CAUSAL_LM", "base_model_name_or_path": root,
            "r": rank, "lora_alpha": rank, "use_rslora": False, "lora_dropout": 0.0, "bias": "none",
            "fan_in_fan_out": bool(top.get("fan_in_fan_out")), "inference_mode": True,
            "target_modules": [module.removeprefix(PREFIX) for module in modules], "modules_to_save": None}


def _check_stackable(adapter: str, config: dict, weights: dict) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise Unstackable(f"{adapter} is a {config['peft_type']} adapter, not LoRA")
    reasons = {"use_dora": "DoRA", "modules_to_save": "modules trained whole beside the adapter",
               "rank_pattern": "per-module ranks", "alpha_pattern": "per-module alphas"}
    for key, reason in reasons.items():
        if config.get(key):
            raise Unstackable(f"{adapter} uses {reason} ({key})")
    if config.get("bias", "none") != "none":
        raise Unstackable(f"{adapter} trains biases (bias: {config['bias']})")
    if odd := [key for key in weights if not key.endswith((A_SUFFIX, B_SUFFIX))]:
        raise Unstackable(f"{adapter} holds weights other than LoRA factors ({odd[0]})")


def _shape_of(module: str, parts: list) -> tuple[int, int]:
    """(out, in) of a module, from any adapter of the chain that wraps it."""
    for _, weights in parts:
        if module + A_SUFFIX in weights:
            return weights[module + B_SUFFIX].shape[0], weights[module + A_SUFFIX].shape[1]
    raise KeyError(module)


def _config(adapter: str) -> dict:
    return json.loads((Path(adapter) / ADAPTER_CONFIG).read_text())


def _weights(adapter: str) -> dict:
    """The adapter's tensors under peft's saved names (no adapter name inside them)."""
    path = Path(adapter)
    if (path / WEIGHTS).is_file():
        from safetensors.torch import load_file

        return load_file(path / WEIGHTS)
    if (path / LEGACY_WEIGHTS).is_file():
        import torch

        return torch.load(path / LEGACY_WEIGHTS, map_location="cpu", weights_only=True)
    raise Unstackable(f"{adapter} holds no {WEIGHTS}")
