"""Reading a judge's score or verdict from a model: a greedy judgement's parsed score, the expected
score over the probabilities of the score digits, the probabilities of `A` and `B` after `Winner: `.
Shared by the judge, the meta-judge and the evaluation of a judge."""

from __future__ import annotations

from selfimprove.scoring import judging


def score_distributions(backend, prompts: list[str], settings: dict, on_done=None) -> list[list[float]]:
    """The judge's probability of each score 0..max_score as the token after the prompt and the prefill
    (`Score: `). A model that never writes a score on its own (SmolLM2-135M) still has a distribution
    over the digits there; its mean is the probability-weighted score."""
    choices = [str(value) for value in range(settings["max_score"] + 1)]
    return backend.choice_probs([p + settings["prefill"] for p in prompts], choices, settings["batch_size"],
                                on_batch=on_done)


def distributions_after(backend, prompts: list[str], written: list[list[str]], settings: dict) -> list[list[list[float]]]:
    """Mode generate_then_expected: per prompt, per judgement written for it, the score digits'
    distribution after the judgement and the prefill."""
    after = [prompt + text.rstrip() + "\n" for prompt, texts in zip(prompts, written) for text in texts]
    flat = iter(score_distributions(backend, after, settings))
    return [[next(flat) for _ in texts] for texts in written]


def winner_probabilities(backend, prompts: list[str], batch_size: int, on_done=None) -> list[list[float]]:
    """A comparison's probabilities of `A` and `B` as the token after the prompt and `Winner: ` (the
    meta-judge in mode expected, the win rate with a judge that reads probabilities)."""
    return backend.choice_probs([p + "Winner: " for p in prompts], ["A", "B"], batch_size, on_batch=on_done)


def greedy_scores(backend, prompts: list[str], settings: dict, seed: int, on_batch=None) -> list[float | None]:
    """One greedy judgement's score per prompt, in the judge's mode (evaluation uses this)."""
    if settings["mode"] == "expected":
        found = score_distributions(backend, prompts, settings, on_batch)
        return [judging.expected_score(p, settings["min_score_mass"]) for p in found]
    texts = [t[0] for t in backend.sample(prompts, 1, 0.0, 1.0, settings["max_new_tokens"], settings["batch_size"],
                                          seed, on_batch=on_batch)]
    if settings["mode"] == "generate_then_expected":
        found = distributions_after(backend, prompts, [[t] for t in texts], settings)
        return [judging.expected_score(p[0], settings["min_score_mass"]) for p in found]
    return [judging.parse_score(t, settings["score_pattern"], settings["max_score"]) for t in texts]
