"""Model references: builtin models, local directories and hub ids (by id and revision)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"  # what peft writes beside a LoRA adapter's weights


def builtin(model: str):
    """The selfimprove.core.stage.Builtin that builtin:<name> names (selfimprove.core.registry.BUILTIN_MODELS),
    or None for any other model reference."""
    if not model.startswith("builtin:"):
        return None
    from selfimprove.core.errors import UserError
    from selfimprove.core.registry import UnknownName, resolve

    try:
        return resolve("builtin model", model.split(":", 1)[1])
    except UnknownName as error:
        raise UserError(f"model: {error}") from None


def builtin_dir(model: str, variant: str | None = None) -> str | None:
    """runs/builtin/<name> for builtin:<name> (runs/builtin/<variant> for one built with other settings,
    selfimprove.core.stage.Builtin.variant), else None."""
    from selfimprove.core.stage import builtin_directory

    found = builtin(model)
    return builtin_directory(variant or found.name) if found else None


def load(reference: str, revision: str | None = None, for_training: bool = False):
    """(model, tokenizer) from a local directory, a LoRA iteration's adapter directory (merged into its
    base in memory), a temperature head's directory (its language model; selfimprove.models.head_files)
    or a hub id. Decoder-only models pad on the left for batched generation; training
    code switches padding as TRL needs. A model for training stays on the CPU: the Trainer moves it to
    its process's device (moving it here would put every process's copy on GPU 0 first)."""
    import torch

    from selfimprove.core.warm_link import make_room

    under_head = head_base(reference)
    if under_head:
        return load(*under_head, for_training=for_training)
    make_room()  # a warm engine (engine: warm) sleeps while this model takes the memory
    tokenizer = load_tokenizer(reference, revision)
    tokenizer.padding_side = "left"
    dtype = torch.float32 if not torch.cuda.is_available() else torch.bfloat16
    model = _load_weights(reference, revision, dtype)
    if torch.cuda.is_available() and not for_training:
        model = model.to("cuda")
    if not for_training:
        model.eval()
    return model, tokenizer


def load_tokenizer(reference: str, revision: str | None = None):
    """The tokenizer alone (a reward model's, or load's): padding with EOS where the model has no pad token."""
    from transformers import AutoTokenizer

    from selfimprove.core.errors import from_hub

    with from_hub(reference):  # a hub id not cached and no network: one line saying how to use a local copy
        tokenizer = AutoTokenizer.from_pretrained(reference, **revision_kwargs(reference, revision))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def revision_kwargs(reference: str | Path, revision: str | None) -> dict:
    """from_pretrained's revision: a hub id is read at its pinned revision; a local directory has none."""
    return {} if Path(reference).is_dir() else {"revision": revision}


def is_adapter(reference: str | Path) -> bool:
    """Whether reference is a LoRA iteration's output: a peft adapter directory, not a whole model."""
    return (Path(reference) / ADAPTER_CONFIG).is_file()


def head_base(reference: str | Path) -> tuple[str, str | None] | None:
    """(the language model, its revision) a temperature head's directory reads, or None for any other
    reference. The head itself is read by the hf backend (selfimprove.backends.hf)."""
    from selfimprove.models.head_files import base_model

    return base_model(str(reference))


def _load_weights(reference: str, revision: str | None, dtype):
    from transformers import AutoModelForCausalLM

    from selfimprove.core.errors import from_hub

    if is_adapter(reference):
        return _merged_adapter(reference, dtype)
    with from_hub(reference):
        return AutoModelForCausalLM.from_pretrained(reference, dtype=dtype, **revision_kwargs(reference, revision))


def _merged_adapter(directory: str, dtype):
    """The whole model an adapter directory stands for: its base, the model its iteration started from
    (peft records it in adapter_config.json; itself an adapter when the previous iteration used LoRA
    too, merged first, so adapters chain), with the adapter's update merged into the weights."""
    config = json.loads((Path(directory) / ADAPTER_CONFIG).read_text())
    try:
        from peft import PeftModel
    except ImportError:
        from selfimprove.core.errors import UserError

        raise UserError(f"{directory} is a LoRA adapter and loading it needs peft: "
                        "pip install 'selfimprove[lora]'") from None
    base = _load_weights(config["base_model_name_or_path"], config.get("revision"), dtype)
    merged = PeftModel.from_pretrained(base, directory).merge_and_unload()
    # The merged model is the adapter directory's model: a LoRA trained on it next records this
    # directory (not the bottom of the chain) as its base.
    merged.name_or_path = merged.config.name_or_path = str(directory)
    return merged


def full_weights_dir(reference: str, scratch: str | Path, revision: str | None = None) -> str:
    """A directory holding the whole model for backends that read weights from disk (vLLM): reference
    itself unless it is an adapter, else the merged model written once to scratch/<fingerprint>."""
    under_head = head_base(reference)
    if under_head:
        return full_weights_dir(under_head[0], scratch, under_head[1])
    if not is_adapter(reference):
        return reference
    blob = json.dumps(model_identity(reference, revision), sort_keys=True)
    target = Path(scratch) / hashlib.sha256(blob.encode()).hexdigest()[:16]
    if not (target / "config.json").is_file():
        model, tokenizer = load(reference, revision, for_training=True)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        save(model, tokenizer, partial)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)  # a killed write never leaves a half model that looks whole
    return str(target)


def save(model, tokenizer, directory: str | Path) -> None:
    """Write a model and its tokenizer to a directory; a full disk ends in one line naming it."""
    from selfimprove.core.errors import writing

    Path(directory).mkdir(parents=True, exist_ok=True)
    with writing(directory):
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)


def model_identity(model: str, revision: str | None = None) -> list:
    """What a model reference stands for: file sizes and mtimes of a local directory, else id + revision;
    an adapter directory's identity includes its base's, so a retrained base changes it too."""
    path = Path(model)
    if not path.is_dir():
        return [model, revision]
    files = sorted([str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns]
                   for f in path.rglob("*") if f.is_file())
    if is_adapter(path):
        config = json.loads((path / ADAPTER_CONFIG).read_text())
        files.append(model_identity(config["base_model_name_or_path"], config.get("revision")))
    if head_base(path):
        files.append(model_identity(*head_base(path)))
    return files
