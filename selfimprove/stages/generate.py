"""Sample n completions per training prompt from the previous iteration's model.

    python -m selfimprove.stages.generate --params params.yaml --section scpo.it1 \
        --model runs/builtin/tiny-arith --out runs/scpo/it1/samples.jsonl --stats runs/scpo/it1/generate.json

Resumable inside the stage (selfimprove.stages.shards): prompts are processed in shards named by a fingerprint
of the settings, prompts, template and model, so a rerun after a crash reuses every complete shard and
a changed setting or model never reuses a stale one. The stats file holds the stage's figures: samples,
seconds, and the tokens, requests and cost the backend reports (the OpenAI backend).
"""

from __future__ import annotations

import time
from pathlib import Path

from selfimprove.tasks import data as data_sources
from selfimprove.backends import open_backend, usage_figures
from selfimprove.core.errors import UserError
from selfimprove.models import model_identity
from selfimprove.stages.shards import discard, fingerprint, run_in_shards, scratch_dir
from selfimprove.core.stage import Context, Setting, Stage, declaration
from selfimprove.stages._io import (iteration_stage_parser, read_jsonl, read_section, revision_for, stage_main, write_json,
                                    write_jsonl)


def generate(settings: dict, records: list[dict], model_ref: str, out: str | Path, template: str = "{question}",
             revision: str | None = None, backend=None) -> int:
    """Write one JSONL row per sample; return how many shards were reused from an interrupted run."""
    out = Path(out)
    backend = backend or open_backend({}, model_ref, revision)

    def work(shard: list[dict], index: int, on_done) -> list[dict]:
        return _sample_shard(backend, shard, settings, template, index, on_batch=on_done)

    key = fingerprint(settings, records, template, model_identity(model_ref, revision))
    rows, reused = run_in_shards("generate", records, settings["shard_size"], out, key, work)
    backend.close()
    write_jsonl(out, rows)
    discard(out)
    return reused


def _sample_shard(backend, shard: list[dict], settings: dict, template: str, index: int,
                  on_batch=None) -> list[dict]:
    """The n voting samples of each prompt, then its extra_n high-temperature samples (ScPO's later
    iterations draw those only to find rejected answers: they never vote). A model with a temperature
    head (Adaptive Decoding) decodes with the head's temperatures, recorded with each sample."""
    prompts = [template.format(question=r["question"]) for r in shard]
    seed = settings["seed"] * 100003 + index
    head = getattr(backend, "temperature_head", None)

    def draw(n: int, temperature: float, seed: int, on_batch=None):
        if head is None:
            texts = backend.sample(prompts, n, temperature, settings["top_p"], settings["max_new_tokens"],
                                   settings["batch_size"], seed, on_batch=on_batch)
            return texts, [[None] * len(t) for t in texts]
        return backend.sample_with_temperatures(prompts, n, settings["top_p"], settings["max_new_tokens"],
                                                settings["batch_size"], seed, settings["head_pick"],
                                                on_batch=on_batch)

    # Progress in prompts over both draws, each batch counted by its share of the samples: the extra
    # draw is as long as the voting one in ScPO's later iterations, and used to report nothing.
    n, extra_n = settings["n"], settings["extra_n"]
    share = (lambda before, weight: lambda done: on_batch((before + done * weight) // (n + extra_n))) if on_batch else None
    completions, temperatures = draw(n, settings["temperature"], seed, share and share(0, n))
    extras, extra_temperatures = [[] for _ in prompts], [[] for _ in prompts]
    if extra_n:
        extras, extra_temperatures = draw(extra_n, settings["extra_temperature"], seed + 1,
                                          share and share(len(prompts) * n, extra_n))
    rows = [{"id": r["id"], "prompt": p, "question": r["question"], "gold": r["answer"], "solution": r.get("solution"),
             "sample": j, "extra": j >= len(main), "completion": c, **data_sources.prompt_fields(r),
             **({"temperature": t} if head is not None else {})}
            for r, p, main, extra, temps in zip(shard, prompts, completions, extras,
                                                 [a + b for a, b in zip(temperatures, extra_temperatures)])
            for j, (c, t) in enumerate(zip(main + extra, temps))]
    if settings["logprobs"]:
        if not hasattr(backend, "logprobs"):
            raise UserError("generate.logprobs: the backend cannot score its samples' probabilities; use backend hf "
                            "or set generate.logprobs: false")
        found = backend.logprobs([row["prompt"] for row in rows], [row["completion"] for row in rows],
                                 settings["batch_size"])
        rows = [{**row, "logprob": value} for row, value in zip(rows, found)]
    return rows


def generation_stats(records: list[dict], out: str | Path, backend, seconds: float) -> dict:
    """The figures of generate.json: how much was sampled, how long it took, what the backend spent."""
    samples = len(read_jsonl(out))
    return {"generate_prompts": len(records), "generate_samples": samples, "generate_seconds": round(seconds, 2),
            **usage_figures("generate", backend)}


def main(argv=None) -> None:
    parser = iteration_stage_parser(__doc__, "model", "out", "stats")
    parser.add_argument("--prompts", help="prompts an earlier stage wrote (Self-RIP's synthesize) instead of data.prompts")
    args = parser.parse_args(argv)
    run = read_section(args.params, args.run)
    data = run["data"]
    records = (read_jsonl(args.prompts) if args.prompts else
               data_sources.load_records(data["prompts"], data, data["prompts_size"], need_answers=False))
    revision = revision_for(run, args.model)
    backend = open_backend(run, args.model, revision, scratch=scratch_dir(args.out))
    started = time.monotonic()
    settings = run[f"it{args.iteration}"]["generate"]
    reused = generate(settings, records, args.model, args.out,
                      settings["prompt_template"] or data["prompt_template"], revision, backend)
    write_json(args.stats, generation_stats(records, args.out, backend, time.monotonic() - started))
    print(f"generate: {len(records)} prompts" + (f", {reused} shard(s) reused from an interrupted run" if reused else ""))


SETTINGS = {
    "n": Setting.count(8, "samples per prompt (k in ScPO)"),
    "temperature": Setting(float, 0.7, "sampling temperature", check=lambda v: v >= 0, fix="must be >= 0 (0 means greedy)"),
    "top_p": Setting(float, 0.9, "nucleus sampling mass", check=lambda v: 0 < v <= 1, fix="must be in (0, 1]"),
    "max_new_tokens": Setting.count(64, "longest completion, in tokens"),
    "batch_size": Setting(int, 512, "sequences per forward pass; lower it if memory runs out",
                          check=lambda v: v >= 1, fix="must be >= 1"),
    "shard_size": Setting(int, 128, "prompts per resumable shard: smaller loses less on a crash",
                          check=lambda v: v >= 1, fix="must be >= 1"),
    "extra_n": Setting(int, 0, "extra samples per prompt that never vote, only supply rejected answers (ScPO: 8)",
                       check=lambda v: v >= 0, fix="must be >= 0 (0: no extra samples)"),
    "extra_temperature": Setting(float, 1.2, "temperature of the extra samples",
                                 check=lambda v: v >= 0, fix="must be >= 0"),
    "seed": Setting(int, 0, "sampling seed"),
    "logprobs": Setting(bool, False, "also record log p(completion | prompt) of each sample (DivPO's probability "
                        "criterion; backend hf)", omit_default=True),
    "head_pick": Setting(str, "sample", "with a temperature head (Adaptive Decoding): sample each temperature "
                         "from the head (LPO's exploration) or take its argmax", choices=("sample", "argmax"),
                         omit_default=True),
    "prompt_template": Setting(str, "", "this stage's prompt, in place of data.prompt_template ({question} is "
                               "replaced): System 2 distillation samples with a reasoning prompt that the "
                               "evaluation and the distilled model never see", omit_default=True,
                               check=lambda v: not v or "{question}" in v, fix="must contain {question} (or be '')"),
}


@declaration
def node(ctx: Context) -> dict:
    out, written = ctx.outputs, ctx.inputs.get("prompts")
    cmd = ctx.command(STAGE, model=ctx.policy, out=out["samples"], stats=out["generate_stats"])
    # Prompts an earlier stage wrote replace data.prompts: then only the prompt template of the data is read.
    template = [key for key in ctx.data_keys("prompts") if key.endswith(".prompt_template")]
    prompts = ([written], template) if written else (ctx.data_file("prompts"), ctx.data_keys("prompts"))
    return ctx.node(
        STAGE, cmd=cmd + (f" --prompts {written}" if written else ""),
        deps=prompts[0] + ([ctx.policy] if ctx.policy_is_dep else []),
        params=[ctx.section("generate")] + prompts[1] + ctx.revision_keys(ctx.policy) + ctx.backend_keys,
        outs=[out["samples"]], metrics=[out["generate_stats"]])


STAGE = Stage("generate", SETTINGS, node=node, optional_reads=("prompts",),
              writes={"samples": "samples.jsonl", "generate_stats": "generate.json"},
              plugins=lambda ctx: [("backend", ctx.backend)] + ([] if "prompts" in ctx.inputs else
                                                                data_sources.task_plugins(ctx.data["prompts"])),
              metrics=(Stage.Metric("generate_cost*", "lower", role="cost",
                                    help="the backend's API cost, where prices are set (stop: budget)"),
                       Stage.Metric("generate_prompts", help="prompts sampled"),
                       Stage.Metric("generate_samples", help="samples written"),
                       Stage.Metric("generate_seconds", "lower", unit="s", help="wall time of the sampling")))

if __name__ == "__main__":
    stage_main(main)
