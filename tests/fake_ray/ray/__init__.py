"""A fake `ray` with the pieces of Ray Data LLM the ray backend calls: a processor that answers
`<prompt|seed>` and hands rows back in reverse order, as a cluster may."""

from ray import data  # noqa: F401

_initialized = []


def is_initialized() -> bool:
    return bool(_initialized)


def init(**kwargs) -> None:
    _initialized.append(kwargs)


def shutdown() -> None:
    _initialized.clear()
