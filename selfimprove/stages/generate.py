"""Sample n completions per training prompt from the previous iteration's model.

    python -m selfimprove.stages.generate --params params.yaml --section scpo.it1 \
        --model runs/builtin/tiny-arith --out runs/scpo/it1/samples.jsonl

Resumable inside the stage: prompts are processed in shards written to a scratch folder beside the
output, named by a fingerprint of the settings, prompts and model. A rerun after a crash reuses every
complete shard; a changed setting or model gives a new fingerprint, so a stale shard is never reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from selfimprove import data as data_sources
from selfimprove.models import model_identity
from selfimprove.progress import Progress
from selfimprove.stages._io import iteration_stage_args, read_jsonl, read_section, revision_for, write_jsonl


def fingerprint(settings: dict, records: list[dict], model: str, revision: str | None) -> str:
    blob = json.dumps([settings, records, model_identity(model, revision)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def generate(settings: dict, records: list[dict], model_ref: str, out: str | Path, template: str = "{question}",
             revision: str | None = None) -> int:
    """Write one JSONL row per sample; return how many shards were reused from an interrupted run."""
    out = Path(out)
    scratch = out.parent / f".{out.stem}-shards" / fingerprint(settings, records, model_ref, revision)
    scratch.mkdir(parents=True, exist_ok=True)
    shard_size = settings["shard_size"]
    shards = [records[i:i + shard_size] for i in range(0, len(records), shard_size)]
    progress = Progress("generate", len(records), "prompts")
    model = tokenizer = None
    reused = 0
    for index, shard in enumerate(shards):
        shard_path = scratch / f"shard-{index:05d}.jsonl"
        if shard_path.exists():
            reused += 1
        else:
            if model is None:  # load lazily: a fully reused run never pays for it
                from selfimprove import models

                model, tokenizer = models.load(model_ref, revision)
            done_before = index * shard_size
            write_jsonl(shard_path, _sample_shard(model, tokenizer, shard, settings, template, index,
                                                  on_batch=lambda done: progress.update(done_before + done)))
        progress.update(min(len(records), (index + 1) * shard_size))
    rows = [row for index in range(len(shards)) for row in read_jsonl(scratch / f"shard-{index:05d}.jsonl")]
    write_jsonl(out, rows)
    shutil.rmtree(scratch.parent)
    return reused


def _sample_shard(model, tokenizer, shard: list[dict], settings: dict, template: str, index: int,
                  on_batch=None) -> list[dict]:
    """The n voting samples of each prompt, then its extra_n high-temperature samples (ScPO's later
    iterations draw those only to find rejected answers: they never vote)."""
    from selfimprove.sampling import sample

    prompts = [template.format(question=r["question"]) for r in shard]
    seed = settings["seed"] * 100003 + index
    completions = sample(model, tokenizer, prompts, settings["n"], settings["temperature"], settings["top_p"],
                         settings["max_new_tokens"], settings["batch_size"], seed=seed, on_batch=on_batch)
    extras = [[] for _ in prompts]
    if settings["extra_n"]:
        extras = sample(model, tokenizer, prompts, settings["extra_n"], settings["extra_temperature"],
                        settings["top_p"], settings["max_new_tokens"], settings["batch_size"], seed=seed + 1)
    return [{"id": r["id"], "prompt": p, "gold": r["answer"], "solution": r.get("solution"), "sample": j,
             "extra": j >= len(main), "completion": c}
            for r, p, main, extra in zip(shard, prompts, completions, extras) for j, c in enumerate(main + extra)]


def main(argv=None) -> None:
    args = iteration_stage_args(__doc__, argv, "model", "out")
    run = read_section(args.params, args.run)
    data = run["data"]
    records = data_sources.load_records(data["prompts"], data, data["prompts_size"], need_answers=False)
    reused = generate(run[f"it{args.iteration}"]["generate"], records, args.model, args.out,
                      data["prompt_template"], revision_for(run, args.model))
    print(f"generate: {len(records)} prompts" + (f", {reused} shard(s) reused from an interrupted run" if reused else ""))


if __name__ == "__main__":
    main()
