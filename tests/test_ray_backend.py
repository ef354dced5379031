"""The ray backend's rows, seeds and order, against a fake `ray` (tests/fake_ray); the real Ray Data LLM
on vLLM's CPU build is in tests/test_vllm_real.py."""

import sys
from pathlib import Path

import pytest

from selfimprove.backends import open_backend
from selfimprove.backends.seeds import sample_seed
from selfimprove.core.errors import UserError

FAKE_RAY = Path(__file__).resolve().parent / "fake_ray"


@pytest.fixture
def fake_ray(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE_RAY))
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    import ray

    yield ray
    ray.shutdown()


def test_rows_come_back_in_place_each_with_its_own_seed(fake_ray):
    backend = open_backend({"backend": "ray", "ray": {"concurrency": 2}}, "m")
    texts = backend.sample(["a", "b", "c"], 2, 1.0, 0.9, 8, 8, seed=7)  # the fake answers in reverse order
    assert texts == [[f"<{p}|{sample_seed(7, i, j)}>" for j in range(2)] for i, p in enumerate("abc")]
    assert backend.sample(["a", "b"], 4, 0.0, 0.9, 8, 8, seed=7) == [[f"<a|{sample_seed(7, 0, 0)}>"],
                                                                    [f"<b|{sample_seed(7, 1, 0)}>"]]  # greedy: one
    assert fake_ray._initialized == [{"num_gpus": 1, "log_to_driver": False}]  # a local cluster, one nominal GPU
    backend.close()
    assert not fake_ray.is_initialized()


def test_what_ray_cannot_do_is_one_line(fake_ray, monkeypatch):
    with pytest.raises(UserError, match="chat_template: true is not supported with backend ray"):
        open_backend({"backend": "ray", "chat_template": True}, "m")
    with pytest.raises(UserError, match="backend: ray does not read next-token probabilities"):
        open_backend({"backend": "ray"}, "m").choice_probs(["q"], ["1"])
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install 'selfimprove\[ray\]'"):
        open_backend({"backend": "ray"}, "m").sample(["a"], 1, 0.0, 1.0, 4, 4, seed=0)
