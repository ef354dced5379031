"""The train stage as a Ray Train job (train.launcher: ray) on a simulated two-node cluster on this machine
(ray.cluster_utils.Cluster: two raylets of one CPU each; CPU workers, gloo).

    .venv-vllm/bin/python -m pytest -m ray_train tests/test_ray_train.py     # needs ray[train]

Checked: each node ran one worker; the model equals what two processes of `accelerate launch` (the
compiler's own command for processes: 2) train from the same pairs, seed and global batch; a driver
killed mid-training resumes from its last Ray checkpoint on rerun and ends with the uninterrupted
run's model; a finished job hands its model back without training again; no Ray process is left.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray_train
pytest.importorskip("ray.train.torch", reason="ray[train] is not installed (the ray_train tier)")

import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from selfimprove.core.registry import stage_defaults  # noqa: E402
from selfimprove.stages.train import launcher as train_launcher  # noqa: E402
from selfimprove.stages.untrained import save_untrained  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two nodes of one CPU each; Ray's files under this test's temp dir, never the machine's /tmp/ray
    (another user's bare ray.init() would find the cluster there)."""
    temp = tmp_path_factory.mktemp("ray")
    os.environ["RAY_TMPDIR"] = str(temp)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes
    nodes.shutdown()
    deadline = time.monotonic() + 90  # agents outlive their raylet by up to a minute (measured: 61 s)
    while _ray_processes(temp) and time.monotonic() < deadline:
        time.sleep(2)
    assert not _ray_processes(temp), "Ray processes were left behind"


def _ray_processes(temp: Path) -> list[str]:
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if str(temp) in line:
            found.append(line[:120])
    return found


def _project(folder: Path, settings: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "base").exists():
        save_untrained(folder / "base", layers=1)
    (folder / "params.yaml").write_text(yaml.safe_dump({"t": {"model": "base", "model_revision": None,
                                                               "it1": {"train": settings}}}))
    with open(folder / "pairs.jsonl", "w") as f:
        for a in range(10, 42):
            f.write(json.dumps({"prompt": f"{a}+{a}=", "chosen": f" #### {2 * a}", "rejected": f" #### {2 * a + 1}",
                                "weight": 1.0}) + "\n")
    return folder


def _settings(**change) -> dict:
    settings = stage_defaults("train")
    settings.update({"processes": 2, "batch_size": 2, "max_length": 32, "lr": 1e-2, "epochs": 1.0, "save_steps": 2,
                     **change})
    return settings


def _stage(folder: Path, settings: dict, env: dict, **popen) -> subprocess.Popen:
    command = (f"{train_launcher(settings)} -m selfimprove.stages.train --params params.yaml --run t "
               "--iteration 1 --model base --pairs pairs.jsonl --out model")
    env = dict(env, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               PYTHONPATH=str(ROOT))
    env.pop("SELFIMPROVE_PROGRESS", None)
    return subprocess.Popen(shlex.split(command), cwd=folder, env=env, text=True, **popen)


def _checkpoint_recorded(storage: Path) -> bool:
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        except ValueError:  # being written
            continue
        if str(latest.get("checkpoint_dir_name", "")).startswith("checkpoint_"):
            return True
    return False


def _figures(stdout: str) -> dict:
    line = next(line for line in stdout.splitlines() if line.startswith("train: "))
    return dict(part.split(" ", 1) for part in line.removeprefix("train: ").split(", "))


def _weights(folder: Path) -> dict:
    return load_file(folder / "model" / "model.safetensors")


def test_two_workers_on_two_nodes_train_what_two_accelerate_processes_train(cluster, tmp_path):
    ray_settings = _settings(launcher="ray", ray_address=cluster.address, ray_placement="STRICT_SPREAD",
                             ray_resources_per_worker={"CPU": 1})
    on_ray = _stage(_project(tmp_path / "ray", ray_settings), ray_settings, os.environ,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = on_ray.communicate(timeout=600)
    assert on_ray.returncode == 0, out[-2000:] + err[-3000:]
    figures = _figures(out)
    assert figures["processes"] == "2" and figures["ray_nodes"] == "2"  # one worker on each node
    assert figures["steps"] == "8"  # 32 pairs / (2 per worker * 2 workers)
    local_settings = _settings()
    local = _stage(_project(tmp_path / "local", local_settings), local_settings, os.environ,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = local.communicate(timeout=600)
    assert local.returncode == 0, out[-2000:] + err[-3000:]
    mine, theirs, base = _weights(tmp_path / "ray"), _weights(tmp_path / "local"), load_file(
        tmp_path / "ray/base/model.safetensors")
    assert max((mine[k] - theirs[k]).abs().max().item() for k in mine) <= 1e-6
    assert max((mine[k] - base[k]).abs().max().item() for k in mine) > 1e-3  # training moved the weights
    assert sorted(p.name for p in (tmp_path / "ray/model").iterdir()) == sorted(
        p.name for p in (tmp_path / "local/model").iterdir())
    # a rerun of the finished job hands its model back without training
    again = _stage(tmp_path / "ray", ray_settings, os.environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0 and _figures(out)["steps"] == "8", err[-2000:]
    assert all(torch.equal(tensor, mine[key]) for key, tensor in _weights(tmp_path / "ray").items())


def test_a_driver_killed_mid_training_resumes_from_its_last_ray_checkpoint(cluster, tmp_path):
    settings = _settings(launcher="ray", ray_address=cluster.address, ray_placement="STRICT_SPREAD",
                         ray_resources_per_worker={"CPU": 1}, epochs=4.0, save_steps=4)
    reference = _stage(_project(tmp_path / "whole", settings), settings, os.environ,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    project = _project(tmp_path / "killed", settings)
    first = _stage(project, settings, os.environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   start_new_session=True)
    storage = project / ".model-ray"
    deadline = time.monotonic() + 600
    while not _checkpoint_recorded(storage):  # Ray Train recorded a checkpoint in its snapshot: kill the driver
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)
    assert not (project / "model").exists()
    rerun = _stage(project, settings, os.environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    figures = _figures(out)
    assert int(figures["resumed_from_step"]) > 0 and figures["steps"] == "32"
    whole, resumed = _weights(tmp_path / "whole"), _weights(project)
    assert max((whole[k] - resumed[k]).abs().max().item() for k in whole) <= 1e-6
    assert [p.name for p in project.iterdir() if p.name.startswith("model")] == ["model"]  # no duplicate model
