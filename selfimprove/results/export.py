"""`selfimprove export RUN@K DIR`: an iteration's model as a plain model directory, for serving.

A LoRA iteration's adapter (and the chain of adapters under it) is merged into its base; a full model is
written as it is. A temperature head (Adaptive Decoding) is exported with its language model: DIR holds
the language model (what `vllm serve DIR` and `models.load` read) and DIR/temperature_head the head,
whose `base_model` is `..`, so `DIR/temperature_head` is itself a model reference that decodes with the
head (backend hf). The export is written to a scratch directory beside DIR and renamed at the end: a
killed export never leaves a half model that looks whole.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from selfimprove.core.errors import UserError

HEAD_DIR = "temperature_head"


def iteration_model(project: Path, run: str, k: int) -> tuple[str, str | None]:
    """(the model reference of iteration K of a run, its hub revision): iteration 0 is the loop's model."""
    if k > 0:
        directory = project / "runs" / run / f"it{k}" / "model"
        if not directory.is_dir():
            raise UserError(f"{run}@{k}: {directory} does not exist; run the loop to iteration {k} first "
                            "(selfimprove status shows what is done)")
        return str(directory), None
    params = yaml.safe_load((project / "params.yaml").read_text()) if (project / "params.yaml").exists() else {}
    section = (params or {}).get(run) or {}
    if "model" not in section:
        raise UserError(f"{run}@0: params.yaml has no model for run {run!r}; run or compile its loop first")
    from selfimprove.models import builtin_dir

    model, variant = section["model"], section.get("builtin")  # builtin: the run's own build of its builtin
    return (str(project / builtin_dir(model, variant)) if builtin_dir(model) else model), section.get("model_revision")


def export(model_ref: str, out: Path, revision: str | None = None) -> str:
    """Write model_ref as a plain model directory at out; return what was written, in words."""
    from selfimprove import models
    from selfimprove.models import temperature_head

    if out.exists() and any(out.iterdir()):
        raise UserError(f"export: {out} exists and is not empty; name a new directory (nothing was written)")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model, tokenizer = models.load(model_ref, revision, for_training=True)
    models.save(model, tokenizer, partial)
    what = "a merged LoRA adapter chain" if models.is_adapter(model_ref) else "a full model"
    if temperature_head.is_head(model_ref):
        head, config = temperature_head.load(model_ref)
        relocated = temperature_head.HeadConfig(config.temperatures, config.level, config.hidden_size, config.width,
                                                config.layers, "..", None)
        temperature_head.save(head, relocated, partial / HEAD_DIR)
        what = f"its language model, with the temperature head in {HEAD_DIR}/"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(partial, out)
    return what
