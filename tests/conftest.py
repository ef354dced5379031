"""Shared fixtures: a tiny untrained model directory, and the fake `vllm` module on the import path."""

import os
import sys
from pathlib import Path

import pytest

FAKE_VLLM = Path(__file__).resolve().parent / "fake_vllm"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 1-layer tiny-arith model with random weights (built in about a second): real tokenizer and
    transformers model, meaningless texts; enough to compare backends on the same weights."""
    import torch

    from selfimprove.stages.bootstrap import build_model, build_tokenizer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny") / "model"
    tokenizer = build_tokenizer()
    build_model(tokenizer, layers=1).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture
def fake_vllm(monkeypatch):
    """`import vllm` finds tests/fake_vllm, here and in processes started from here (PYTHONPATH)."""
    monkeypatch.syspath_prepend(str(FAKE_VLLM))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAKE_VLLM), os.environ.get("PYTHONPATH")])))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    import vllm

    return vllm
