"""Bootstrap a reward model for the NaturalReasoning miniature locally, with TRL's RewardTrainer: a small
Llama sequence classifier on the embedded task's character vocabulary, trained on pairs from the train
split of (question + a right response) over (question + a wrong one), written as the seed model writes
them in its own samples: right answers mostly worked digit by digit, wrong ones mostly direct guesses
(` #### 785`, off by an amount a tiny solver gets wrong), a few the worked solution of a nearby problem
(one operand digit moved by one). No downloads.

    python examples/natural_reasoning/train_reward_model.py [OUT] [--init DIR | --init none]
        # OUT: default runs/reward-models/tiny-arith-rm; DIR: default runs/builtin/tiny-arith-judge

As reward models usually are, it starts from a language model's weights (`--init`, the loop's seed model
once a run has built it; its tokenizer too) with a new one-logit score head; `--init none` starts from
random weights.

What it learns is what tells right from wrong in such samples, mostly the format: measured on 1,000
validation pairs, 88.1% pairwise accuracy, but 49.0% on the pairs whose two answers are both direct (it
cannot add). It is an imperfect external reward, as reward models are. With the formats balanced between
right and wrong answers (so that only checking the sum could tell them apart), it stayed at chance
(loss 0.693) from random weights and from the seed's: checking is more than it learns here.

Prints its pairwise accuracy and its agreement (score above 0 read as "right") on the validation split.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

from selfimprove.tasks import tinyarith
from selfimprove.stages.bootstrap import build_tokenizer
from selfimprove.tasks.arith_evaluator import nearby_problem, wrong_answer

PAIRS, EPOCHS, LR, SEED = 6400, 1, 1e-3, 0  # 100 steps: the loss is flat after 20 (measured)
# How often a right and a wrong response is worked out step by step, as in the seed model's own samples
# (builtin:tiny-arith-judge at T 0.7: 29% of samples write steps and are right 95% of the time, the
# direct guesses 11%), so the classifier learns from the kind of pairs it will score.
WORKED_GIVEN_RIGHT, WORKED_GIVEN_WRONG = 0.78, 0.02


def pairs(split: str, count: int, seed: int) -> list[dict]:
    rng = random.Random(f"rm:{split}:{seed}")
    rows = []
    for record in tinyarith.problems(seed=seed, count=count, digits=3, split=split):
        a, b = map(int, record["question"][:-1].split("+"))
        right = tinyarith.worked_solution(a, b) if rng.random() < WORKED_GIVEN_RIGHT else tinyarith.direct_solution(a, b)
        if rng.random() < WORKED_GIVEN_WRONG:
            wrong = tinyarith.worked_solution(*nearby_problem(rng, a, b))
        else:
            wrong = f" #### {wrong_answer(rng, a + b)}"
        rows.append({"chosen": record["question"] + right, "rejected": record["question"] + wrong})
    return rows


def initial_model(init: str | None):
    """(model, tokenizer): a language model's weights under a new score head, or a random small Llama."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    if init:
        tokenizer = AutoTokenizer.from_pretrained(init)
        model = LlamaForSequenceClassification.from_pretrained(init, num_labels=1, pad_token_id=tokenizer.pad_token_id)
        return model, tokenizer
    tokenizer = build_tokenizer(tinyarith.CHARS)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, num_labels=1,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForSequenceClassification(config), tokenizer


def build(out: Path, init: str | None) -> None:
    import torch
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(SEED)
    model, tokenizer = initial_model(init)
    tokenizer.padding_side = "right"
    with tempfile.TemporaryDirectory() as scratch:
        args = RewardConfig(output_dir=scratch, num_train_epochs=EPOCHS, per_device_train_batch_size=64,
                            learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=50, max_length=64,
                            logging_steps=10, save_strategy="no", report_to="none", seed=SEED, use_cpu=True,
                            disable_tqdm=True, bf16=False,  # TRL turns bf16 on; on this CPU it made each step 8x slower
                            # TRL appends an end token to each text; the reward stage scores question + response
                            # as they are. Appending the pad token instead makes the classifier read the last
                            # real character (it reads the last non-pad position), as it does when scoring.
                            eos_token=tokenizer.pad_token)
        trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs("train", PAIRS, SEED)),
                                processing_class=tokenizer, callbacks=[_Steps()])
        trainer.train()
        trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))


def _Steps():
    """A callback printing the step, its loss and the time every few seconds (tqdm is off: its bar is
    noise in a log, and nothing else spoke for the whole ~10 minutes of training on a CPU)."""
    import time

    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started = self.last = time.time()
            print(f"training the reward model: {state.max_steps} steps", flush=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.loss = (logs or {}).get("loss", getattr(self, "loss", None))

        def on_step_end(self, args, state, control, **kwargs):
            now = time.time()
            if now - self.last >= 5 or state.global_step == state.max_steps:
                self.last = now
                loss = getattr(self, "loss", None)
                print(f"  step {state.global_step}/{state.max_steps}" + (f", loss {loss:.3f}" if loss else "")
                      + f", {now - self.started:.0f} s", flush=True)

    return Steps()


def check(out: Path) -> None:
    from selfimprove.scoring.rewards import model_scores

    rows = pairs("validation", 1000, SEED + 1)
    print(f"scoring {len(rows)} validation pairs with {out}", flush=True)
    settings = {"model": str(out), "revision": "", "chat_template": False, "batch_size": 256, "seed": 0}
    chosen, _ = model_scores(settings, [""] * len(rows), [r["chosen"] for r in rows])
    rejected, _ = model_scores(settings, [""] * len(rows), [r["rejected"] for r in rows])
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(rows)
    agreement = (sum(c > 0 for c in chosen) + sum(r <= 0 for r in rejected)) / (2 * len(rows))
    print(f"{out}: pairwise accuracy {accuracy:.3f}, agreement (score > 0 = right) {agreement:.3f} "
          f"on {len(rows)} validation pairs")
    # What it checks beyond the format: pairs in which both responses are written the same way.
    for label, worked in (("both direct", False), ("both worked", True)):
        same = [c > r for row, c, r in zip(rows, chosen, rejected)
                if _worked(row["chosen"]) == worked and _worked(row["rejected"]) == worked]
        if same:
            print(f"  {label}: pairwise accuracy {sum(same) / len(same):.3f} on {len(same)} pairs")


def _worked(text: str) -> bool:
    return ";" in text


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/reward-models/tiny-arith-rm")
    parser.add_argument("--init", default="runs/builtin/tiny-arith-judge",
                        help="a language model directory to start from, or none")
    args = parser.parse_args()
    init = None if args.init == "none" else args.init
    if init and not Path(init).is_dir():
        sys.exit(f"--init {init}: no such model directory; run `selfimprove compile loops/natural_reasoning_rm.yaml "
                 f"&& dvc repro bootstrap-tiny-arith-judge` first, or pass --init none")
    build(Path(args.out), init)
    check(Path(args.out))
