"""Pair rules: how a scorer's records become preference pairs (registry.PAIR_RULES).

A rule is a function (records, settings of the pairs stage, rng) -> (pairs, statistics) with an
attribute `needs`: the artifact it consumes, "votes" (the vote stage's answer counts) or "scores" (one
score per response, from the judge or reward stage), and optionally `settings`: its own settings
(selfimprove.core.stage.Setting, declared with omit_default=True), which join the pairs stage's. A new rule
is one function in one module here plus one registry line.
"""

from __future__ import annotations


def rule_of(settings: dict):
    """The pair rule an iteration's settings name (settings: every stage's, by stage name)."""
    from selfimprove.core.registry import resolve

    return resolve("pair rule", settings["pairs"]["rule"])


def needs(settings: dict) -> str:
    """What the iteration's pair rule consumes: "votes" or "scores"."""
    return rule_of(settings).needs
