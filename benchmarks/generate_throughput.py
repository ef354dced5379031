"""Generate-stage throughput (hf backend) against a raw `model.generate` loop on the same prompts and
settings (target: the stage at >= 0.9x the raw loop's tokens per second).

    python benchmarks/generate_throughput.py [--model runs/builtin/tiny-arith] [--prompts 128] [--n 8]

The stage is called as a function (selfimprove.stages.generate.generate: shards, fingerprints, JSONL
out, the hf backend); the raw loop is what a hand-written script would do: batches of batch_size // n
prompts, one `generate` call each, decode. Without --model a 2-layer tiny-arith model with random
weights is built (it rarely stops early, so both sides generate about max_new_tokens per sample).
Tokens are counted the same way for both: the tokenizer's length of each completion.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def raw_loop(model_ref: str, prompts: list[str], n: int, temperature: float, top_p: float, max_new_tokens: int,
             batch_size: int) -> list[str]:
    import torch

    from selfimprove import models

    model, tokenizer = models.load(model_ref)
    torch.manual_seed(0)
    per_batch = max(1, batch_size // n)
    texts = []
    for start in range(0, len(prompts), per_batch):
        encoded = tokenizer(prompts[start:start + per_batch], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=max_new_tokens, num_return_sequences=n, do_sample=True,
                                 temperature=temperature, top_p=top_p, top_k=0, pad_token_id=tokenizer.pad_token_id)
        texts += tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    return texts


def stage(model_ref: str, records: list[dict], settings: dict, scratch: Path) -> list[str]:
    from selfimprove.stages._io import read_jsonl
    from selfimprove.stages.generate import generate

    out = scratch / "samples.jsonl"
    generate(settings, records, model_ref, out)
    return [row["completion"] for row in read_jsonl(out)]


def count_tokens(model_ref: str, texts: list[str]) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_ref)
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model directory (default: a random 2-layer tiny-arith model)")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="alternate the two this many times; best of each")
    args = parser.parse_args()
    from selfimprove.tasks import tinyarith
    from selfimprove.stages.untrained import save_untrained
    from selfimprove.core.registry import stage_defaults

    with tempfile.TemporaryDirectory() as tmp:
        model_ref = args.model or save_untrained(Path(tmp) / "model", layers=2)
        records = [{**problem, "id": i} for i, problem in
                   enumerate(tinyarith.problems(seed=0, count=args.prompts, digits=3, split="train"))]
        settings = {**stage_defaults("generate"), "n": args.n, "max_new_tokens": args.max_new_tokens,
                    "batch_size": args.batch_size, "shard_size": args.prompts}
        prompts = [r["question"] for r in records]
        raw_loop(model_ref, prompts[:8], args.n, 0.7, 0.9, 8, args.batch_size)  # warm up: load, first kernels
        figures: dict[str, float] = {}
        # Alternated, best of each: on a shared machine the load changes between runs.
        for repeat in range(args.repeats):
            for name, run in (("stage", lambda: stage(model_ref, records, settings, Path(tmp) / f"r{repeat}")),
                              ("raw", lambda: raw_loop(model_ref, prompts, args.n, settings["temperature"],
                                                       settings["top_p"], args.max_new_tokens, args.batch_size))):
                started, cpu_started = time.perf_counter(), time.process_time()
                texts = run()
                seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
                tokens = count_tokens(model_ref, texts)
                figures[name] = max(figures.get(name, 0.0), tokens / seconds)
                figures[f"{name}_cpu"] = max(figures.get(f"{name}_cpu", 0.0), tokens / cpu)
                print(f"{name:5s}: {len(texts)} samples, {tokens} tokens in {seconds:.2f} s = "
                      f"{tokens / seconds:,.0f} tokens/s ({tokens / cpu:,.0f} per CPU-second)", flush=True)
        print(f"best: stage {figures['stage']:,.0f} tokens/s, raw {figures['raw']:,.0f} tokens/s; "
              f"ratio stage/raw: {figures['stage'] / figures['raw']:.2f} (target >= 0.9); per CPU-second "
              f"(less sensitive to other load on the machine): {figures['stage_cpu'] / figures['raw_cpu']:.2f}")


if __name__ == "__main__":
    main()
