"""Put a temperature head on the policy (Adaptive Decoding, Dhuliawala et al. 2024): the model the rest of
the iteration samples with and LPO trains.

    python -m selfimprove.stages.head --params params.yaml --run adaptive_decoding --iteration 1 \
        --model runs/builtin/tiny-mixed --out runs/adaptive_decoding/it1/head

A policy without a head (the loop's model) gets a fresh one, uniform over the temperatures (its last
layer starts at zero), reading the model's last hidden state. A policy with one (the previous
iteration's LPO output) keeps it: the head's files are copied, and settings that disagree with the head
it has fail in one line. The output is a head directory (selfimprove.models.temperature_head): a few kilobytes
beside a language model that is never copied or changed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from selfimprove.models import temperature_head
from selfimprove.core.errors import UserError
from selfimprove.core.registry import DEFAULT_BACKEND
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import iteration_stage_args, read_section, revision_for, stage_main


def attach(settings: dict, model_ref: str, out: str | Path, revision: str | None = None) -> str:
    """Write the policy's head (kept, or a fresh one) to out; return what was done."""
    out = Path(out)
    temperatures = temperature_head.parse_temperatures(settings["temperatures"])
    if temperature_head.is_head(model_ref):
        config = temperature_head.read_config(model_ref)
        if (tuple(config.temperatures), config.level) != (temperatures, settings["level"]):
            raise UserError(f"head: {model_ref} has a {config.level}-level head over temperatures "
                            f"{','.join(map(str, config.temperatures))}, and head.temperatures / head.level ask for "
                            f"a {settings['level']}-level one over {settings['temperatures']}; a loop keeps one "
                            "head: set them as the head was made, or start a new run")
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for name in (temperature_head.CONFIG, temperature_head.WEIGHTS):
            shutil.copyfile(Path(model_ref) / name, out / name)
        return f"kept the {config.level}-level head of {model_ref}"
    config = temperature_head.HeadConfig(temperatures, settings["level"], hidden_size(model_ref, revision),
                                         settings["width"], settings["layers"], model_ref, revision)
    temperature_head.save(temperature_head.build(config, settings["seed"]), config, out)
    return f"a new {config.level}-level head over {len(temperatures)} temperatures on {model_ref}"


def hidden_size(model_ref: str, revision: str | None) -> int:
    """The model's hidden size, from its config alone (no weights are loaded)."""
    from transformers import AutoConfig

    from selfimprove.core.errors import from_hub
    from selfimprove.models import revision_kwargs

    with from_hub(model_ref):
        config = AutoConfig.from_pretrained(model_ref, **revision_kwargs(model_ref, revision))
    return getattr(config, "hidden_size", None) or config.get_text_config().hidden_size


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "model", "out")
    run = read_section(args.params, args.run)
    print("head: " + attach(run[f"it{args.iteration}"]["head"], args.model, args.out, revision_for(run, args.model)))


@declaration
def _temperature_set(text: str) -> bool:
    try:
        temperature_head.parse_temperatures(text)
    except ValueError:
        return False
    return True


SETTINGS = {
    "temperatures": Setting(str, ",".join(map(str, temperature_head.DEFAULT_TEMPERATURES)),
                            "the head's temperatures, comma-separated (0 is greedy)", check=_temperature_set,
                            fix="must be two or more distinct temperatures >= 0, comma-separated, e.g. 0,0.2,0.4,0.6,0.8,1.0"),
    "level": Setting(str, "sequence", "sequence (one temperature per response, from the last prompt token) or "
                     "token (one per generated token)", choices=temperature_head.LEVELS),
    "width": Setting.count(64, "the MLP's hidden width"),
    "layers": Setting.count(3, "the MLP's linear layers (the paper: 3)"),
    "seed": Setting(int, 0, "seed of a new head's initial weights"),
}


@declaration
def check(settings: dict, problems, top: dict) -> None:
    backend = top.get("backend", DEFAULT_BACKEND) if isinstance(top, dict) else DEFAULT_BACKEND
    if backend != "hf":
        problems.add(("backend",), f"the head stage needs backend: hf (decoding with a temperature head reads the "
                     f"model's hidden states at every step); {backend} cannot, so drop `backend: {backend}`")


@declaration
def node(ctx: Context) -> dict:
    return ctx.node(STAGE, cmd=ctx.command(STAGE, model=ctx.policy, out=ctx.outputs["model"]),
                    deps=[ctx.policy] if ctx.policy_is_dep else [],
                    params=[ctx.section("head")] + ctx.revision_keys(ctx.policy), outs=[ctx.outputs["model"]])


STAGE = Stage("head", SETTINGS, node=node, writes={"model": "head"}, check=check,
              model_code=("selfimprove.models.temperature_head",),  # readers decode with the head
              adapter=lambda settings: True,  # a head directory loads the language model under it
              included=lambda settings: False)  # only where a loop's pipeline names it

if __name__ == "__main__":
    stage_main(main)
