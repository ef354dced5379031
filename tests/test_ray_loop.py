"""A whole loop on one simulated two-node Ray cluster from one `selfimprove run`: every sampling stage on
Ray Data LLM (backend: ray, vLLM's CPU build) and training as a Ray Train job (train.launcher: ray, one
worker per node), against the same loop run on this machine (backend: vllm, accelerate with 2
processes). Needs real vLLM, ray[data] and ray[train] (the ray_train tier, in .venv-vllm).

Tolerance: the trained weights are the same bitwise (tests/test_ray_train.py) and Ray Data LLM returns
the offline engine's texts for the same requests (tests/test_vllm_real.py), so the metrics should be
equal; vLLM does not promise a text when its batch changes (no batch-invariant mode here), and each
held-out problem whose greedy text flips moves accuracy by 1/16, so up to 2 of 16 are allowed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray_train
pytest.importorskip("ray.train.torch", reason="ray[train] is not installed (the ray_train tier)")
pytest.importorskip("ray.data.llm", reason="ray[data] is not installed (the ray_train tier)")
vllm = pytest.importorskip("vllm", reason="backend: ray needs vLLM")
if "fake_vllm" in (getattr(vllm, "__file__", "") or ""):
    pytest.skip("real vLLM is needed (the ray_train tier runs in .venv-vllm)", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
ENGINE = "{gpu_memory_utilization: 0.1, max_model_len: 128, dtype: float32}"
LOOP = """\
name: v
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test, prompts_size: 16, eval_size: 16, digits: 2}
iterations: 1
bootstrap: {steps: 40, batch_size: 16, digits: 2, layers: 1}
BACKEND
stages:
  generate: {n: 4, max_new_tokens: 24, shard_size: 1000}
  pairs: {min_votes: 0.25}
  train: {batch_size: 2, lr: 1.0e-3, max_length: 48, processes: 2TRAIN}
  evaluate: {k: 2, max_new_tokens: 24}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node with 2 CPUs and a nominal GPU (Ray Data LLM's engine stage asks for one) and a second
    node with 1 CPU; Ray's files under this test's temp dir."""
    os.environ["RAY_TMPDIR"] = str(tmp_path_factory.mktemp("ray"))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1, "include_dashboard": False})
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes
    nodes.shutdown()


def _run(project: Path, backend: str, train: str) -> dict:
    project.mkdir()
    (project / "loop.yaml").write_text(LOOP.replace("BACKEND", backend).replace("TRAIN", train))
    result = subprocess.run([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml"], cwd=project,
                            capture_output=True, text=True, timeout=3000, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((project / "runs/v/metrics.json").read_text())


def _texts(project: Path, output: str, field: str) -> list[str]:
    return [json.loads(line)[field] for line in (project / "runs/v" / output).read_text().splitlines()]


def test_a_whole_loop_on_the_cluster_matches_the_same_loop_on_this_machine(cluster, tmp_path):
    on_cluster = _run(tmp_path / "cluster", f"backend: ray\nray: {{address: '{cluster.address}', batch_size: 64, "
                      f"engine_kwargs: {ENGINE}}}",
                      f", launcher: ray, ray_address: '{cluster.address}', ray_placement: STRICT_SPREAD, "
                      "ray_resources_per_worker: {CPU: 1}")
    local = _run(tmp_path / "local", f"backend: vllm\nvllm: {ENGINE}", "")
    for k in ("it0", "it1"):
        assert on_cluster[k]["problems"] == local[k]["problems"] == 16
        assert abs(on_cluster[k]["accuracy"] - local[k]["accuracy"]) <= 2 / 16, (on_cluster[k], local[k])
    assert on_cluster["it1"]["pairs"] == local["it1"]["pairs"]
    # what the metrics rest on: the same samples, the same pairs, the same trained weights, the same answers
    assert _texts(tmp_path / "cluster", "it1/samples.jsonl", "completion") == _texts(
        tmp_path / "local", "it1/samples.jsonl", "completion")
    pairs = [(tmp_path / side / "runs/v/it1/pairs.jsonl").read_bytes() for side in ("cluster", "local")]
    assert pairs[0] == pairs[1]
    from safetensors.torch import load_file

    mine, theirs = (load_file(tmp_path / side / "runs/v/it1/model/model.safetensors") for side in ("cluster", "local"))
    assert max((mine[k] - theirs[k]).abs().max().item() for k in mine) <= 1e-6
    same = sum(a == b for a, b in zip(_texts(tmp_path / "cluster", "it1/outputs.jsonl", "output"),
                                      _texts(tmp_path / "local", "it1/outputs.jsonl", "output")))
    assert same >= 14, f"{same} of 16 greedy answers equal"
    log = (tmp_path / "cluster/runs/v/repro.log").read_text()
    assert "ray_nodes 2" in log and "processes 2" in log  # the train stage's figures: one worker per node
