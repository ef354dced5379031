"""The preference-pair record: one line of pairs.jsonl, made by a pair rule (or a stage that makes its
own training data) and read by train. One constructor and one reader, so the fields and their defaults
are stated once.
"""

from __future__ import annotations

from typing import TypedDict

# What a pair without the field means. A preference set from elsewhere (lift.pairs_file, a public one)
# may have no weight at all.
DEFAULTS = {"weight": 1.0}


class Pair(TypedDict, total=False):
    """A preference pair, or an SFT example (a completion and no rejected response). Every rule writes
    prompt, chosen and weight; the rest is provenance, read for statistics, by later stages (filter) or
    by people, never by the loss."""

    id: object  # the prompt's id in the task data
    prompt: str  # what the model is trained to answer
    completion: str  # SFT examples: the target (chosen holds it too, so a preference reader still works)
    chosen: str  # the preferred response
    rejected: str  # the dispreferred response; absent from SFT examples
    weight: float  # scales the pair's whole loss: ScPO's vote margin, 1.0 elsewhere
    source: str  # what made it: vote, gold, judge, divpo, best_of_n, system2, judgement_sft/dpo, meta, bsm, lift
    label: str  # judgement rules: the verdict ("A"/"B") the right judgement gives
    rejected_from_extra: bool  # vote rules: the rejected sample was an extra one that never voted
    rejected_unsplittable: bool  # scored rules: the rejected response was one the judge could not see
    chosen_correct: bool | None  # statistics: the chosen response agrees with the gold answer (None: no gold)
    rejected_correct: bool | None
    chosen_verdict_right: bool | None  # metajudge: the preferred judgement's verdict matches the truth
    chosen_score: float  # scored rules, metajudge: the responses' (judgements') mean scores
    rejected_score: float
    score: float  # best_of_n: the kept response's score
    chosen_length: int  # scored rules: the responses' lengths in characters (filter reads them)
    rejected_length: int
    chosen_diversity: float  # divpo: the responses' diversity by the rule's criterion
    rejected_diversity: float
    chosen_temperature: object  # latent: the temperature (or per-token temperatures) each was decoded with
    rejected_temperature: object
    answer: str  # system2: the majority answer the target states
    agreement: float  # system2: the share of System 2 samples that gave it
    system2_samples: int  # system2: how many samples voted
    length_limit: int  # lift: the word limit put into the prompt
    lift_swapped: bool  # lift: the limit makes the originally rejected response the chosen one
    # and prompt_* fields (prompt_kind, ...): the prompt's own fields, copied by the scored rules


def make_pair(prompt: str, chosen: str, rejected: str | None = None, **provenance) -> Pair:
    """The record of one pair; rejected None makes an SFT example. Keys are written as pairs.jsonl has
    always had them (its bytes are what DVC caches and tests compare): id first, then prompt, completion,
    chosen, rejected, then the provenance in the order passed. weight is 1.0 unless passed; when not
    passed it follows the texts, when passed it stays where the caller put it among the provenance."""
    pair = {"id": provenance.pop("id")} if "id" in provenance else {}
    pair["prompt"] = prompt
    if "completion" in provenance:
        pair["completion"] = provenance.pop("completion")
    pair["chosen"] = chosen
    if rejected is not None:
        pair["rejected"] = rejected
    if "weight" not in provenance:
        pair["weight"] = DEFAULTS["weight"]
    pair.update(provenance)
    return pair  # type: ignore[return-value]


def prompt_fields(record: dict) -> dict:
    """The prompt's own fields (prompt_kind, ...) a record carries, for rules that copy them onto pairs."""
    return {key: value for key, value in record.items() if key.startswith("prompt_")}


def with_defaults(pairs: list[dict]) -> list[Pair]:
    """Pairs as train uses them: each record's missing fields filled with DEFAULTS, here once."""
    return [{**DEFAULTS, **pair} for pair in pairs]  # type: ignore[misc]
