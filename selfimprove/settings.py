"""The settings a loop file may hold: every stage's keys with their types and defaults, the allowed
choices, and the data and bootstrap sections. Data only; `selfimprove.config` validates against it.
"""

from __future__ import annotations

from typing import Any

# A setting: (type, default). Types are checked, numbers given as strings ("3e-05", which YAML 1.1
# reads as a string; DVC writes floats that way, see dvc#8466) are coerced.
STAGE_SETTINGS: dict[str, dict[str, tuple[type, Any]]] = {
    "generate": {
        "n": (int, 8),  # samples per prompt (k in ScPO)
        "temperature": (float, 0.7),
        "top_p": (float, 0.9),
        "max_new_tokens": (int, 64),
        "batch_size": (int, 512),  # sequences per forward pass; lower it if memory runs out
        "shard_size": (int, 128),  # prompts per resumable shard: smaller loses less on a crash
        "extra_n": (int, 0),  # extra samples per prompt that never vote, only supply rejected answers (ScPO: 8)
        "extra_temperature": (float, 1.2),
        "seed": (int, 0),
    },
    "vote": {
        "extract": (str, "final_number"),
    },
    "judge": {  # used when pairs.rule is a judge rule (best_vs_worst, length_controlled, length_band)
        "source": (str, "self"),  # self (the policy judges its own samples), openai, or a model directory / hub id
        "endpoint": (str, ""),  # source openai: base URL of an OpenAI-compatible server, e.g. http://host:8000/v1
        "api_model": (str, ""),  # source openai: the model name the server knows
        "api_key_env": (str, ""),  # source openai: the environment variable holding the key (never the key)
        "concurrency": (int, 8),  # source openai: requests in flight
        "timeout": (float, 60.0),  # source openai: seconds per request
        "max_retries": (int, 5),  # source openai: on 429, 5xx and dropped connections, with exponential backoff
        "template": (str, "additive"),  # additive | pairwise | tiny-arith | a path to a text file
        "mode": (str, "generate"),  # generate: write judgements, parse `Score: N`; expected: no text, the score
        # digits' probabilities after prompt + prefill, score = their mean (for judges that never write one);
        # generate_then_expected: write the judgement, then read the score digits after it + prefill
        "prefill": (str, "Score: "),  # mode expected: text appended to the judge prompt before the score digit
        "min_score_mass": (float, 0.1),  # mode expected: less probability than this on the digits is a failure
        "prompt_template": (str, "{question}"),  # wraps judge, meta-judge and win-rate prompts (a chat format)
        "n": (int, 3),  # judgements per response, averaged (Self-Rewarding: 3)
        "temperature": (float, 0.7),
        "top_p": (float, 0.9),
        "max_new_tokens": (int, 256),
        "response_marker": (str, ""),  # TPO: the judge sees only the text after it ("" = everything)
        "score_pattern": (str, r"Score:\s*(\d+)"),
        "max_score": (int, 5),
        "max_failure_rate": (float, 0.5),  # more unparseable judgements than this fails the stage
        "batch_size": (int, 512),
        "shard_size": (int, 512),  # responses per resumable shard
        "seed": (int, 0),
    },
    "metajudge": {  # Meta-Rewarding: used in iterations where pairs.judge_pairs is true
        "template": (str, "meta"),  # meta | tiny-arith-meta | a path to a text file
        "mode": (str, "generate"),  # generate: parse `Winner: A|B`; expected: the likelier of A and B after `Winner: `
        "temperature": (float, 0.0),
        "top_p": (float, 1.0),
        "max_new_tokens": (int, 256),
        "winner_pattern": (str, r"Winner:\s*([AB])"),
        "max_judgement_length": (int, 1100),  # characters; longer chosen judgements are dropped
        "batch_size": (int, 512),
        "shard_size": (int, 512),  # comparisons per resumable shard
        "seed": (int, 0),
    },
    "pairs": {
        "rule": (str, "most_vs_least_voted"),  # ScPO; `gold` is IRPO; `semi_supervised` mixes the two
        "min_votes": (float, 0.5),  # tau as a fraction of n: keep a prompt if its top answer has >= tau*n votes
        "weight": (str, "vote_margin"),
        "pairs_per_question": (int, 10),  # K for the gold rule (IRPO: 10 on GSM8K)
        "labelled_fraction": (float, 0.5),  # semi_supervised: share of questions whose gold answer is used
        "rho": (float, 0.0),  # length control of the judge rules (TPO, Meta-Rewarding); 0 = off
        "judge_pairs": (bool, False),  # Meta-Rewarding: add judge pairs from the meta-judge (train the judge)
        "seed": (int, 0),
    },
    "train": {
        "loss": (str, "dpo+nll"),
        "beta": (float, 0.5),
        "nll_weight": (float, 1.0),  # alpha in the RPO / ScPO loss
        "lr": (float, 5e-6),
        "epochs": (float, 1.0),
        "batch_size": (int, 16),
        "grad_accum": (int, 1),
        "max_length": (int, 256),
        "save_steps": (int, 50),  # checkpoint cadence inside the stage, for resume after a crash
        "gradient_checkpointing": (bool, False),  # true trades ~30% speed for much less activation memory
        "seed": (int, 0),
        # Several processes (one per GPU) through `accelerate launch`; batch_size is per process, so the
        # global batch is batch_size * grad_accum * processes.
        "processes": (int, 1),
        "mixed_precision": (str, "auto"),  # auto: bf16 on a GPU that supports it, else no
        "accelerate_config": (str, ""),  # an accelerate config file (DeepSpeed, FSDP), passed through unchanged
        # LoRA through peft (pip install 'selfimprove[lora]'); the iteration's output is then an adapter
        "lora_r": (int, 0),  # rank; 0 = full fine-tuning. Higher: more capacity and memory
        "lora_alpha": (int, 16),  # the adapter's update is scaled by lora_alpha / lora_r
        "lora_dropout": (float, 0.05),
        "lora_target_modules": (str, "all-linear"),  # or module names, comma-separated: q_proj,v_proj
    },
    "evaluate": {
        "k": (int, 8),  # samples per problem for maj@k
        "temperature": (float, 0.7),
        "top_p": (float, 0.9),
        "max_new_tokens": (int, 64),
        "batch_size": (int, 512),
        "judge_size": (int, 0),  # judge loops: held-out candidate answers to measure the judge's agreement on
        "win_rate_size": (int, 0),  # judge loops: held-out prompts on which iteration K meets iteration 0 (0 = off)
        "win_template": (str, "pairwise"),  # the comparison prompt: {question} {response_a} {response_b}
        "seed": (int, 1234),
    },
}

CHOICES = {
    ("judge", "mode"): ["generate", "expected", "generate_then_expected"],
    ("metajudge", "mode"): ["generate", "expected"],
    ("vote", "extract"): ["final_number"],
    ("pairs", "rule"): ["most_vs_least_voted", "gold", "semi_supervised", "best_vs_worst", "length_controlled",
                        "length_band"],
    ("pairs", "weight"): ["vote_margin", "none"],
    ("train", "loss"): ["dpo+nll", "dpo"],
    ("train", "mixed_precision"): ["auto", "no", "fp16", "bf16"],
}

DATA_SETTINGS: dict[str, tuple[type, Any]] = {
    "prompts": (str, None),  # builtin:arith/train, a .jsonl/.parquet file, or a dataset id
    "eval": (str, None),
    "question_field": (str, "question"),
    "answer_field": (str, "answer"),
    "prompts_size": (int, 512),  # how many training prompts per iteration (the first N)
    "eval_size": (int, 1000),
    "seed": (int, 0),  # seed of the builtin task generator
    "digits": (int, 3),  # operand size of the builtin task (match bootstrap.digits)
    "dataset_config": (str, None),  # config name for a hub dataset id (e.g. main for openai/gsm8k)
    "prompt_template": (str, "{question}"),  # how a question becomes a prompt; {question} is replaced
}

BOOTSTRAP_SETTINGS: dict[str, tuple[type, Any]] = {
    "steps": (int, 1500),
    "batch_size": (int, 32),
    "lr": (float, 3e-3),
    "direct_fraction": (float, 0.6),  # share of examples that state the answer without worked steps
    "digits": (int, 3),  # 2-digit direct sums are learnt too easily: the model leaves the regime (README)
    "layers": (int, 2),
    "judge_fraction": (float, 0.0),  # share of judge examples (builtin:tiny-arith-judge sets it)
    "meta_fraction": (float, 0.0),  # share of meta-judge examples (idem)
    "seed": (int, 0),
}
JUDGE_RULES = ("best_vs_worst", "length_controlled", "length_band")

# Generation backends (selfimprove.backends), chosen by the loop's top-level `backend:` key.
BACKENDS = ("hf", "vllm", "openai")

VLLM_SETTINGS: dict[str, tuple[type, Any]] = {  # backend: vllm (offline vllm.LLM, one or more GPUs)
    "tensor_parallel_size": (int, 1),  # GPUs one model copy is split across: for a model too big for one GPU
    "data_parallel_size": (int, 1),  # model copies, one process each on its own tensor_parallel_size GPUs;
    # the prompts are split between them (throughput for a model that fits on one GPU)
    "gpu_memory_utilization": (float, 0.9),  # share of each GPU's memory vLLM takes (weights + KV cache)
    "max_model_len": (int, 0),  # context length to reserve KV cache for (0: the model's own); lower it on OOM
}

OPENAI_SETTINGS: dict[str, tuple[type, Any]] = {  # backend: openai (any OpenAI-compatible server, `vllm serve`)
    "endpoints": (list, []),  # base URLs; requests go to the least busy, e.g. [http://gpu1:8000/v1, http://gpu2:8000/v1]
    "api_model": (str, ""),  # the name the servers know the model by ("": the model reference the stage is given)
    "api_key_env": (str, ""),  # the environment variable holding the key (never the key)
    "concurrency": (int, 8),  # requests in flight per endpoint
    "timeout": (float, 60.0),  # seconds per request
    "max_retries": (int, 5),  # on 429, 5xx, timeouts and dropped connections, with exponential backoff
    "backoff": (float, 1.0),  # seconds before the first retry; doubles each time
    "price_per_1m_input_tokens": (float, 0.0),  # for the cost in the stage's metrics (0: not priced)
    "price_per_1m_output_tokens": (float, 0.0),
}
