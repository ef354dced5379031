"""The vllm backend against raw `vllm.LLM.generate` on the same prompts and settings (target: the backend
at >= 0.95x the raw tokens per second), and the hf backend on the same model, with the engine start
reported apart from generation. Needs real vLLM (on a CPU: the .venv-vllm of README "vLLM on a CPU").

    .venv-vllm/bin/python benchmarks/vllm_backend.py --model /tmp/smollm2-135m [--prompts 32] [--n 4]

The raw side is what a script using vLLM alone would write: one request per prompt with n samples and
one seed. The backend sends one request per sample, each with its own seed (the fix for samples that
repeat across prompts), so the figure says what that costs. Both run on one engine, alternating, best
of --repeats; tokens are counted with the model's tokenizer on the returned texts. The hf backend runs
the same prompts once (its load is timed apart too).
"""

from __future__ import annotations

import argparse
import time


def prompts_for(count: int) -> list[str]:
    topics = ["rivers", "bread", "the moon", "chess", "bicycles", "tea", "volcanoes", "libraries"]
    return [f"<|im_start|>user\nWrite two sentences about {topics[i % len(topics)]} (note {i}).<|im_end|>\n"
            f"<|im_start|>assistant\n" for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory", type=float, default=0.2, help="vllm gpu_memory_utilization (on a CPU: of RAM)")
    args = parser.parse_args()

    import vllm

    from selfimprove.backends import open_backend
    from selfimprove.backends.hf import HFBackend

    prompts = prompts_for(args.prompts)
    started = time.monotonic()
    backend = open_backend({"backend": "vllm", "vllm": {"gpu_memory_utilization": args.memory, "max_model_len": 512}},
                           args.model)
    llm = backend._engine()
    start_seconds = time.monotonic() - started
    tokenizer = llm.get_tokenizer()

    def tokens(texts: list[list[str]]) -> int:
        return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for row in texts for t in row)

    def raw() -> list[list[str]]:
        params = vllm.SamplingParams(n=args.n, temperature=0.7, top_p=0.9, max_tokens=args.max_new_tokens, seed=0)
        return [[c.text for c in out.outputs] for out in llm.generate(prompts, params, use_tqdm=False)]

    def ours() -> list[list[str]]:
        return backend.sample(prompts, args.n, 0.7, 0.9, args.max_new_tokens, 512, seed=0)

    best = {"raw": 0.0, "backend": 0.0}
    for _ in range(args.repeats):
        for name, run in (("raw", raw), ("backend", ours)):
            t = time.monotonic()
            texts = run()
            best[name] = max(best[name], tokens(texts) / (time.monotonic() - t))
    backend.close()
    t = time.monotonic()
    hf = HFBackend(args.model)
    hf._load()
    load_seconds = time.monotonic() - t
    t = time.monotonic()
    hf_texts = hf.sample(prompts, args.n, 0.7, 0.9, args.max_new_tokens, 64, seed=0)
    hf_rate = tokens(hf_texts) / (time.monotonic() - t)
    print(f"{args.prompts} prompts x {args.n} samples x up to {args.max_new_tokens} tokens, T 0.7, top-p 0.9")
    print(f"vllm engine start: {start_seconds:.0f} s; hf model load: {load_seconds:.1f} s")
    print(f"raw LLM.generate: {best['raw']:.1f} tokens/s; vllm backend: {best['backend']:.1f} tokens/s; "
          f"ratio {best['backend'] / best['raw']:.2f}")
    print(f"hf backend: {hf_rate:.1f} tokens/s")


if __name__ == "__main__":
    main()
