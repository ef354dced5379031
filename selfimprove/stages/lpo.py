"""Latent Preference Optimization of the temperature head (Adaptive Decoding, Dhuliawala et al. 2024).

    python -m selfimprove.stages.lpo --params params.yaml --run adaptive_decoding --iteration 1 \
        --model runs/adaptive_decoding/it1/head --pairs runs/adaptive_decoding/it1/pairs.jsonl \
        --out runs/adaptive_decoding/it1/model --stats runs/adaptive_decoding/it1/lpo.json

Each pair (pairs.rule: latent) holds the temperature(s) of the best and the worst response of a prompt.
The loss is the paper's "separate" variant, on the head only:
    L = -log sigmoid(beta * (log P(tau_chosen) - log P(tau_rejected)))
with log P summed over a response's tokens at token level. TRL's DPOTrainer cannot express it (nothing
flows through the language model's weights). The language model is frozen: its hidden states are
computed once, under no_grad, and only the head's parameters are given to the optimiser; the output is
a new head directory beside the same, unchanged model.
"""

from __future__ import annotations

import math
from pathlib import Path

from selfimprove.models import temperature_head
from selfimprove.core.errors import UserError
from selfimprove.stages.progress import Progress
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import iteration_stage_args, read_jsonl, read_section, stage_main, write_json


def features(model, tokenizer, config, pairs: list[dict]) -> dict:
    """The frozen model's hidden states for each pair, and the index of each chosen / rejected temperature."""
    import torch

    index = {t: i for i, t in enumerate(config.temperatures)}

    def indices(values) -> list[int]:
        unknown = [v for v in values if v not in index]
        if unknown:
            raise UserError(f"lpo: a pair's temperature {unknown[0]} is not in the head's set "
                            f"{','.join(map(str, config.temperatures))}; the pairs come from another head: rerun generate")
        return [index[v] for v in values]

    if config.level == "sequence":
        prompt_states = temperature_head.prompt_features(model, tokenizer, [p["prompt"] for p in pairs])
        return {"chosen": prompt_states, "rejected": prompt_states,
                "chosen_index": torch.tensor(indices([p["chosen_temperature"] for p in pairs])),
                "rejected_index": torch.tensor(indices([p["rejected_temperature"] for p in pairs]))}
    found = {}
    for side in ("chosen", "rejected"):
        states, picks, rows = [], [], []
        for row, pair in enumerate(pairs):
            taus = pair[f"{side}_temperature"]
            hidden = temperature_head.token_features(model, tokenizer, pair["prompt"], pair[side], len(taus))
            states.append(hidden)
            picks += indices(taus[:len(hidden)])
            rows += [row] * len(hidden)
        found[side], found[f"{side}_index"] = torch.cat(states), torch.tensor(picks)
        found[f"{side}_rows"] = torch.tensor(rows, dtype=torch.long)
    return found


def train_head(head, config, batch: dict, settings: dict, pairs: int) -> dict:
    """Adam on the head's parameters over the pairs' features; returns the loss before and after and how
    many pairs the head ranks the right way round."""
    import torch

    torch.manual_seed(settings["seed"])
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    steps_per_epoch = math.ceil(pairs / settings["batch_size"])
    progress = Progress("lpo", steps_per_epoch * settings["epochs"], "steps")
    token_level = config.level == "token"

    def loss_of(rows: "torch.Tensor"):
        if not token_level:
            return temperature_head.lpo_loss(head, batch["chosen"][rows], batch["chosen_index"][rows],
                                             batch["rejected"][rows], batch["rejected_index"][rows], settings["beta"])
        picked = {side: torch.isin(batch[f"{side}_rows"], rows) for side in ("chosen", "rejected")}
        renumber = torch.full((pairs,), -1, dtype=torch.long)
        renumber[rows] = torch.arange(len(rows))
        return temperature_head.lpo_loss(
            head, batch["chosen"][picked["chosen"]], batch["chosen_index"][picked["chosen"]],
            batch["rejected"][picked["rejected"]], batch["rejected_index"][picked["rejected"]], settings["beta"],
            renumber[batch["chosen_rows"][picked["chosen"]]], renumber[batch["rejected_rows"][picked["rejected"]]],
            pairs=len(rows))

    everything = torch.arange(pairs)
    with torch.no_grad():
        start = loss_of(everything).item()
    generator = torch.Generator().manual_seed(settings["seed"])
    step = 0
    head.train()
    for _ in range(settings["epochs"]):
        order = torch.randperm(pairs, generator=generator)
        for first in range(0, pairs, settings["batch_size"]):
            loss = loss_of(order[first:first + settings["batch_size"]])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            progress.update(step)
    head.eval()
    with torch.no_grad():
        end = loss_of(everything).item()
    return {"lpo_pairs": pairs, "lpo_steps": step, "lpo_loss_start": start, "lpo_loss_end": end}


def lpo(settings: dict, pairs: list[dict], model_ref: str, out: str | Path) -> dict:
    """Train the head of model_ref on the pairs and save it to out (beside the same language model)."""
    from selfimprove import models

    if not temperature_head.is_head(model_ref):
        raise UserError(f"lpo: {model_ref} has no temperature head; put the head stage first in the pipeline "
                        "(pipeline: [head, generate, reward, pairs, lpo, ...])")
    head, config = temperature_head.load(model_ref)
    if not pairs:
        temperature_head.save(head, config, out)
        return {"lpo_pairs": 0, "lpo_steps": 0}
    model, tokenizer = models.load(model_ref)
    for parameter in model.parameters():  # frozen: nothing of the language model is trained or written
        parameter.requires_grad_(False)
    figures = train_head(head, config, features(model, tokenizer, config, pairs), settings, len(pairs))
    temperature_head.save(head, config, out)
    return figures


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "model", "pairs", "out", "stats")
    settings = read_section(args.params, args.run)[f"it{args.iteration}"]["lpo"]
    figures = lpo(settings, read_jsonl(args.pairs), args.model, args.out)
    write_json(args.stats, figures)
    print("lpo: " + ", ".join(f"{k.removeprefix('lpo_')} {v:.4g}" if isinstance(v, float) else
                              f"{k.removeprefix('lpo_')} {v}" for k, v in figures.items()))


SETTINGS = {
    "beta": Setting(float, 1.0, "beta in -log sigmoid(beta (log P(tau_c) - log P(tau_r)))", check=lambda v: v > 0,
                    fix="must be > 0"),
    "lr": Setting(float, 1e-3, "the head's learning rate (AdamW)", check=lambda v: v > 0, fix="must be > 0"),
    "weight_decay": Setting(float, 0.0, "AdamW's weight decay", check=lambda v: v >= 0, fix="must be >= 0"),
    "epochs": Setting.count(10, "passes over the pairs"),
    "batch_size": Setting.count(32, "pairs per step"),
    "seed": Setting(int, 0, "seed of the pair order"),
}


@declaration
def node(ctx: Context) -> dict:
    out = ctx.outputs
    cmd = ctx.command(STAGE, model=ctx.policy, pairs=ctx.inputs["pairs"], out=out["model"], stats=out["lpo_stats"])
    return ctx.node(STAGE, cmd=cmd, deps=[ctx.inputs["pairs"]] + ([ctx.policy] if ctx.policy_is_dep else []),
                    params=[ctx.section("lpo")], outs=[out["model"]], metrics=[out["lpo_stats"]])


STAGE = Stage("lpo", SETTINGS, node=node, reads=("pairs",), writes={"model": "model", "lpo_stats": "lpo.json"},
              model_code=("selfimprove.models.temperature_head",),  # readers decode with the head
              adapter=lambda settings: True,  # its head directory loads the language model under it
              included=lambda settings: False)  # only where a loop's pipeline names it

if __name__ == "__main__":
    stage_main(main)
