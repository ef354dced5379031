"""Small explicit registries: name -> "module:attr", resolved on use, with "did you mean" on a miss.

A new stage, pair rule, reward rule, backend or builtin is one entry here plus its own module; nothing
else changes. The order of STAGES is the order of a derived pipeline (a loop without `pipeline:`).
This module only names things: it is not part of any stage's code fingerprint, so adding an entry
re-runs nothing (the entries a stage uses are fingerprinted one by one, see selfimprove.pipeline.fingerprint).
"""

from __future__ import annotations

import difflib
import importlib

STAGES = {
    "synthesize": "selfimprove.stages.synthesize:STAGE",  # Self-RIP: prompts for the generate stage
    "head": "selfimprove.stages.head:STAGE",  # Adaptive Decoding: a temperature head on the policy
    "generate": "selfimprove.stages.generate:STAGE",
    "vote": "selfimprove.stages.vote:STAGE",
    "perturb": "selfimprove.stages.perturb:STAGE",  # Self-Taught Evaluator: contrast pairs
    "pairjudge": "selfimprove.stages.pairjudge:STAGE",  # Self-Taught Evaluator: judgements in both orders
    "system2": "selfimprove.stages.system2:STAGE",  # System 2 distillation: a prompting pipeline
    "bsm": "selfimprove.stages.bsm:STAGE",  # System 2 distillation of Branch-Solve-Merge judging
    "judge": "selfimprove.stages.judge:STAGE",
    "reward": "selfimprove.stages.reward:STAGE",
    "metajudge": "selfimprove.stages.metajudge:STAGE",
    "diversity": "selfimprove.stages.diversity:STAGE",
    "pairs": "selfimprove.stages.pairs:STAGE",
    "filter": "selfimprove.stages.filter:STAGE",
    "lift": "selfimprove.stages.lift:STAGE",  # LIFT: length-instructed pairs
    "train": "selfimprove.stages.train:STAGE",
    "lpo": "selfimprove.stages.lpo:STAGE",  # Adaptive Decoding: Latent Preference Optimization of the head
    "evaluate": "selfimprove.stages.evaluate:STAGE",
    "judge_eval": "selfimprove.stages.judge_eval:STAGE",
    "decoding": "selfimprove.stages.decoding:STAGE",  # Adaptive Decoding: the head against fixed temperatures  # pairwise accuracy on a labelled pair set
    "report": "selfimprove.stages.report:STAGE",
}

# Pair rules: (records of a scorer, settings of the pairs stage, rng) -> (pairs, statistics).
PAIR_RULES = {
    "most_vs_least_voted": "selfimprove.scoring.rules.votes:most_vs_least_voted",
    "gold": "selfimprove.scoring.rules.votes:gold",
    "semi_supervised": "selfimprove.scoring.rules.votes:semi_supervised",
    "best_vs_worst": "selfimprove.scoring.rules.scored:best_vs_worst",
    "length_controlled": "selfimprove.scoring.rules.scored:length_controlled",
    "length_band": "selfimprove.scoring.rules.scored:length_band",
    "min_margin": "selfimprove.scoring.rules.margin:min_margin",  # best vs worst, a least score gap
    "divpo": "selfimprove.scoring.rules.divpo:divpo",
    "best_of_n": "selfimprove.scoring.rules.sft:best_of_n",  # rejection-sampling SFT (train.loss: sft)
    "system2": "selfimprove.scoring.rules.sft:system2",  # System 2 distillation (train.loss: sft)
    "judgement_sft": "selfimprove.scoring.rules.judgements:judgement_sft",  # Self-Taught Evaluator (train.loss: sft)
    "judgement_dpo": "selfimprove.scoring.rules.judgements:judgement_dpo",  # Self-Taught Evaluator, DPO + NLL
    "latent": "selfimprove.scoring.rules.latent:best_vs_worst_latent",  # Adaptive Decoding: tau of best vs worst
}

# Reward rules of the reward stage (reward.source): (question, response, gold, settings) -> float | None,
# or, marked per_prompt, (question, a prompt's responses, gold, settings) -> a score per response.
REWARD_RULES = {
    "correct": "selfimprove.scoring.rewards:correct",
    "json_keys": "selfimprove.scoring.rewards:json_keys",
    "correct_or_distinct": "selfimprove.tasks.mixed:correct_or_distinct",  # Adaptive Decoding's mixed task
}

BACKENDS = {
    "hf": "selfimprove.backends.hf:HFBackend",
    "vllm": "selfimprove.backends.vllm:VLLMBackend",
    "openai": "selfimprove.backends.openai:OpenAIBackend",
    "ray": "selfimprove.backends.ray:RayBackend",
}
DEFAULT_BACKEND = "hf"  # what a loop without `backend:` samples with (and compiles to no backend params)
# Engines a run keeps for its stages (the loop's `engine:`), by the backend they serve: with `engine: warm`
# a vllm stage samples on the run's server (selfimprove.pipeline.engine_broker) instead of its own engine.
RUN_ENGINES = {
    "vllm": "selfimprove.backends.warm:WarmBackend",
}

# Where the train stage trains when not on this machine (`train.launcher`): the launcher's entry point.
TRAIN_LAUNCHERS = {
    "ray": "selfimprove.models.ray_launch:train_on_ray",  # a Ray Train job on a Ray cluster
}

# Builtin models (`model: builtin:<name>`): built in the project by a builder stage, never downloaded.
BUILTIN_MODELS = {
    "tiny-arith": "selfimprove.stages.bootstrap:TINY_ARITH",
    "tiny-arith-judge": "selfimprove.stages.bootstrap:TINY_ARITH_JUDGE",
    "tiny-arith-evaluator": "selfimprove.stages.bootstrap:TINY_ARITH_EVALUATOR",  # Self-Taught Evaluator
    "tiny-arith-metajudge": "selfimprove.stages.bootstrap:TINY_ARITH_METAJUDGE",  # Meta-Rewarding, stepwise meta-judge
    "smollm2-135m": "selfimprove.stages.convert:SMOLLM2",
    "tiny-sums": "selfimprove.tasks.sums:TINY_SUMS",
    "tiny-mixed": "selfimprove.tasks.mixed:TINY_MIXED",  # Adaptive Decoding
}

# Builtin tasks (`data.prompts: builtin:<task>/<split>`, and what builtin models learn): selfimprove.tasks.Task.
BUILTIN_TASKS = {
    "arith": "selfimprove.tasks.tinyarith:TASK",
    "sums": "selfimprove.tasks.sums:TASK",
    "noisy-arith": "selfimprove.tasks.noisy_arith:TASK",
    "arith-evaluator": "selfimprove.tasks.arith_evaluator:TASK",
    "mixed": "selfimprove.tasks.mixed:TASK",
}

# What a setting's value names (selfimprove.core.stage.Reads.kind) -> the reader `validate` checks it with:
# (value, reads, the setting's name) -> a note or None, raising UserError. The stage reads with the same code.
FILE_KINDS = {
    "template": "selfimprove.core.templates:check",  # placeholders as the stage fills them
    "pairs": "selfimprove.scoring.pairfile:check_pairs_file",  # JSONL of prompt, chosen, rejected
    "examples": "selfimprove.stages.synthesize:check_examples",  # JSONL of prompts (question or prompt)
    "model": "selfimprove.models.references:check_model",  # builtin, model directory or hub id
    "callable": "selfimprove.core.callables:check",  # module:function, found without importing it
    "yaml": "selfimprove.loop.yamlfile:check_file",  # a YAML mapping (an accelerate config)
}

# Views of `selfimprove show` (selfimprove.results.views): how the records of an artifact a stage writes
# (Stage.writes) read, per prompt, for people. Keyed by the artifact, or by "stage.artifact" where a stage
# writes an artifact its own way (the filter's kept pairs). A stage writing a new JSONL artifact adds one
# entry here (tests/test_show.py checks that each has one); metrics files and models have no view.
VIEWS = {
    "prompts": "selfimprove.results.views:prompts",  # Self-RIP's synthesized prompts
    "samples": "selfimprove.results.views:samples",
    "votes": "selfimprove.results.views:votes",
    "scores": "selfimprove.results.views:scores",  # judge, reward and diversity records (one shape)
    "contrast": "selfimprove.results.views:contrast",
    "judgements": "selfimprove.results.views:pair_judgements",
    "outputs": "selfimprove.results.views:heldout",  # evaluate's greedy answers on the held-out set
    "judge_pairs": "selfimprove.results.pair_views:pairs",
    "pairs": "selfimprove.results.pair_views:pairs",
    "pairs.pairs": "selfimprove.results.pair_views:rule_pairs",  # why a prompt made none, by its pair rule
    "filter.pairs": "selfimprove.results.pair_views:filtered_pairs",
    "lift.pairs": "selfimprove.results.pair_views:lifted_pairs",
}

REGISTRIES = {"stage": STAGES, "pair rule": PAIR_RULES, "reward rule": REWARD_RULES, "backend": BACKENDS,
              "run engine": RUN_ENGINES, "train launcher": TRAIN_LAUNCHERS,
              "builtin model": BUILTIN_MODELS, "builtin task": BUILTIN_TASKS, "file kind": FILE_KINDS,
              "view": VIEWS}


class UnknownName(LookupError):
    """A name no registry entry has; str() is the one-line message with the nearest names."""


def suggestion(name: str, names) -> str:
    names = [str(n) for n in names]
    close = difflib.get_close_matches(str(name), names, n=1)
    return f"did you mean '{close[0]}'?" if close else f"available: {', '.join(names)}"


def module_of(kind: str, name: str) -> str:
    """The module a registry entry lives in (without importing it)."""
    return entry(kind, name).split(":", 1)[0]


def entry(kind: str, name: str) -> str:
    table = REGISTRIES[kind]
    if name not in table:
        raise UnknownName(f"unknown {kind} {name!r}; {suggestion(name, table)}")
    return table[name]


def resolve(kind: str, name: str):
    """The object a registry entry names, imported on use."""
    module, attr = entry(kind, name).split(":", 1)
    found = getattr(importlib.import_module(module), attr)
    if kind == "stage" and not found.module:
        found.module = module
    return found


def stages() -> list:
    """Every registered stage, in derived-pipeline order."""
    return [resolve("stage", name) for name in STAGES]


def metrics() -> list:
    """Every metric the stages declare (selfimprove.core.stage.Metric), in the order `selfimprove metrics`
    shows them: by their `order`, then those without one. A name two stages declare counts once, as the
    first stage in derived-pipeline order declares it. Read on each call: a registered stage's metrics
    count at once, with nothing else to edit."""
    found: dict = {}
    for stage in stages():
        for metric in stage.metrics:
            found.setdefault(metric.name, metric)
    placed = sorted((m for m in found.values() if m.order is not None), key=lambda m: m.order)
    return placed + [m for m in found.values() if m.order is None]


def metric(key: str, declared: list | None = None):
    """The declaration a metrics-file key falls under: its exact name first, then a pattern; None if none."""
    declared = metrics() if declared is None else declared
    return next((m for m in declared if m.name == key), None) or next((m for m in declared if m.matches(key)), None)


def headlines() -> list[str]:
    """The headline candidates by priority (accuracy, pairwise_accuracy, decoding_score): an iteration
    that has one was evaluated, and the first one a run reports is the metric its RUN@best picks by."""
    return [m.name for m in metrics() if m.headline]


def stage_defaults(name: str) -> dict:
    """A stage's settings at their defaults (what a loop file that does not mention it gives it)."""
    return resolve("stage", name).defaults()


def load(target: str):
    """The object "module:attribute" names, imported on use: code a stage runs only in some loops, named
    by string so that it counts in the fingerprint of the stages that declare it (Stage.plugins)."""
    module, attribute = target.split(":", 1)
    return getattr(importlib.import_module(module), attribute)
