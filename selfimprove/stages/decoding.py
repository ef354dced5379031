"""Adaptive decoding against every fixed temperature (Dhuliawala et al. 2024, their tables' comparison).

    python -m selfimprove.stages.decoding --params params.yaml --run adaptive_decoding --iteration 1 \
        --model runs/adaptive_decoding/it1/model --out runs/adaptive_decoding/it1/decoding.json

On the held-out prompts (data.eval), k samples per prompt, scored by the loop's reward (reward.source,
the same scorer the pairs were made with). A model without a head (the base model, iteration 0) is
decoded at each fixed temperature of decoding.temperatures; one with a head (iterations >= 1) with the
head's argmax temperature (`adaptive`) and with temperatures sampled from it (`adaptive_sampled`). The
language model under the head never changes, so iteration 0's fixed-temperature rows are the baseline
of every iteration. Figures per method m and per prompt kind (data's prompt_kind, e.g. exact / variety):
score_<m>[_<kind>] (the mean score per sample), its standard deviation over prompts (*_sd, for intervals
over prompts: samples of one prompt are correlated), and for the head the mean temperature it chose.
A greedy method (temperature 0) decodes each prompt once: its k samples are that output k times.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from selfimprove.tasks import data as data_sources
from selfimprove.scoring import rewards
from selfimprove.models import temperature_head
from selfimprove.backends import open_backend
from selfimprove.stages.progress import Progress
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.core.registry import resolve, stage_defaults
from selfimprove.stages._io import iteration_stage_args, read_section, revision_for, stage_main, write_json


def samples_of(backend, prompts: list[str], settings: dict, method: str, on_batch=None):
    """(k texts per prompt, k temperatures per prompt or None) for a fixed temperature or the head."""
    k, top_p, length, batch, seed = (settings["k"], settings["top_p"], settings["max_new_tokens"],
                                     settings["batch_size"], settings["seed"])
    if method.startswith("adaptive"):
        pick = "argmax" if method == "adaptive" else "sample"
        return backend.sample_with_temperatures(prompts, k, top_p, length, batch, seed, pick, on_batch=on_batch)
    texts = backend.sample(prompts, k, float(method), top_p, length, batch, seed, on_batch=on_batch)
    return [t * k if len(t) == 1 else t for t in texts], None


def method_figures(name: str, records: list[dict], texts: list[list[str]], temps, scores: list[list[float]]) -> dict:
    """The figures of one method, overall and per prompt kind."""
    kinds = defaultdict(list)
    for i, record in enumerate(records):
        kinds["all"].append(i)
        if record.get("kind") is not None:
            kinds[record["kind"]].append(i)
    figures = {}
    for kind, members in kinds.items():
        suffix = "" if kind == "all" else f"_{kind}"
        per_prompt = [_mean([s if s is not None else 0.0 for s in scores[i]]) for i in members]
        figures[f"score_{name}{suffix}"] = _mean(per_prompt)
        figures[f"score_{name}{suffix}_sd"] = _sd(per_prompt)
        figures[f"decoding_prompts{suffix}"] = len(members)
        if temps is not None:
            chosen = [_mean([_mean(t) if isinstance(t, list) else t for t in temps[i]]) for i in members]
            figures[f"temperature_{name}{suffix}"] = _mean(chosen)
            figures[f"temperature_{name}{suffix}_sd"] = _sd(chosen)
    return figures


def decode_and_score(settings: dict, reward_settings: dict, records: list[dict], prompts: list[str], backend) -> dict:
    has_head = getattr(backend, "temperature_head", None) is not None
    methods = (["adaptive", "adaptive_sampled"] if has_head else
               [str(t) for t in temperature_head.parse_temperatures(settings["temperatures"])])
    figures: dict = {}
    progress = Progress("decoding", len(methods) * len(prompts), "prompts")
    for done, method in enumerate(methods):
        texts, temps = samples_of(backend, prompts, settings, method,
                                  on_batch=lambda n, done=done: progress.update(done * len(prompts) + n))
        items = [(i, r["question"], t, r.get("answer")) for i, (r, ts) in enumerate(zip(records, texts)) for t in ts]
        flat = iter(scores_of(reward_settings, items))
        scores = [[next(flat) for _ in ts] for ts in texts]
        name = method if has_head else f"t{method}"
        figures.update(method_figures(name, records, texts, temps, scores))
    fixed = {key: value for key, value in figures.items() if key.startswith("score_t") and key.count("_") == 1}
    if fixed:
        best = max(fixed, key=fixed.get)
        figures["decoding_best_fixed_temperature"] = float(best.removeprefix("score_t"))
        figures["decoding_score"] = fixed[best]
    else:
        figures["decoding_score"] = figures["score_adaptive"]
    return figures


def scores_of(reward_settings: dict, items: list[tuple]) -> list:
    """The reward of each (prompt id, question, response, gold): a reward model's, or a rule's."""
    if reward_settings["source"] == "model":
        return rewards.model_scores(reward_settings, [q for _, q, _, _ in items], [r for _, _, r, _ in items])[0]
    return rewards.rule_scores(rewards.rule(reward_settings), items)


def _mean(values) -> float:
    values = list(values)
    return statistics.fmean(values) if values else 0.0


def _sd(values: list[float]) -> float:
    """The sample standard deviation (n - 1); 0 for fewer than two values."""
    return statistics.stdev(values) if len(values) >= 2 else 0.0


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "model", "out")
    run = read_section(args.params, args.run)
    data, stages = run["data"], run[f"it{args.iteration}"]
    records = data_sources.load_records(data["eval"], data, data["eval_size"], need_answers=False)
    records = [{**r, "kind": r.get("kind")} for r in records]
    prompts = [data["prompt_template"].format(question=r["question"]) for r in records]
    reward_settings = stages.get("reward") or stage_defaults("reward")
    revision = revision_for(run, args.model)
    backend = open_backend(run, args.model, revision)
    figures = decode_and_score(stages["decoding"], reward_settings, records, prompts, backend)
    backend.close()
    write_json(args.out, figures)
    shown = sorted(k for k in figures if k.startswith("score_") and not k.endswith("_sd") and k.count("_") == 1)
    print("decoding: " + ", ".join(f"{k.removeprefix('score_')} {figures[k]:.3f}" for k in shown))


SETTINGS = {
    "temperatures": Setting(str, ",".join(map(str, temperature_head.DEFAULT_TEMPERATURES)),
                            "the fixed temperatures a model without a head is decoded at (the head's set)"),
    "k": Setting.count(8, "samples per prompt"),
    "top_p": Setting(float, 1.0, "nucleus sampling mass", check=lambda v: 0 < v <= 1, fix="must be in (0, 1]"),
    "max_new_tokens": Setting.count(64, "longest completion, in tokens"),
    "batch_size": Setting.count(512, "sequences per forward pass"),
    "seed": Setting(int, 1234, "sampling seed"),
}


@declaration
def node(ctx: Context) -> dict:
    out = ctx.outputs
    params = ([ctx.section("decoding")] + ([ctx.section("reward")] if "reward" in ctx.tracked else [])
              + ctx.data_keys("eval") + ctx.revision_keys(ctx.policy) + ctx.backend_keys)
    return ctx.node(STAGE, cmd=ctx.command(STAGE, model=ctx.policy, out=out["decoding_stats"]),
                    deps=ctx.data_file("eval") + ([ctx.policy] if ctx.policy_is_dep else []), params=params,
                    metrics=[out["decoding_stats"]])


@declaration
def files(ctx: Context) -> list[tuple[str, str]]:
    """The reward's files (a user's module:function, a reward model), where the loop has a reward stage."""
    return [("reward", key) for key in ("source", "model")] if "reward" in ctx.tracked else []


STAGE = Stage("decoding", SETTINGS, node=node, files=files, settings_of=("reward",), base_iteration=True,
              writes={"decoding_stats": "decoding.json"},
              included=lambda settings: False,  # only where a loop's pipeline names it
              plugins=lambda ctx: [("backend", ctx.backend)] + resolve("stage", "reward").plugins(ctx)
              + data_sources.task_plugins(ctx.data["eval"]),
              metrics=(Stage.Metric("decoding_score", "higher", headline=True, curve=True, order=60,
                                    help="the head's mean score, or the best fixed temperature's without a head"),
                       Stage.Metric("decoding_best_fixed_temperature", order=70,
                                    help="the fixed temperature scoring best"),
                       Stage.Metric("score_adaptive", "higher", order=80, help="mean score sampling with the head"),
                       Stage.Metric("temperature_adaptive", order=90, help="mean temperature the head chose"),
                       Stage.Metric("score_*", help="mean score per sample at a temperature, per prompt kind; "
                                    "*_sd: its standard deviation over prompts"),
                       Stage.Metric("temperature_*", help="mean temperature the head chose, per prompt kind")))

if __name__ == "__main__":
    stage_main(main)
