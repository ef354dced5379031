"""End to end through the real CLI, DVC and TRL on a tiny loop: cached reruns, per-key params, resume
after a SIGKILL of the whole process group during generate and during train, Ctrl-C, and SIGTERM and
SIGHUP sent to selfimprove alone (a scheduler's preemption, a closed terminal) at seeded-random moments.

These tests run real subprocesses (about 5 minutes together on 2 cores) and share one uninterrupted run
as the reference for the resumed ones.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY_LOOP = """\
name: t
model: builtin:tiny-arith
data: {prompts: prompts.parquet, eval: test.jsonl, prompts_size: 64, eval_size: 40}
iterations: 2
bootstrap: {steps: 120, batch_size: 32, digits: 2}
stages:
  generate: {n: 4, max_new_tokens: 40, shard_size: 4, batch_size: 8}
  pairs: {min_votes: 0.25}
  train: {batch_size: 2, save_steps: 1, lr: 1.0e-4, max_length: 64}
  evaluate: {k: 2, max_new_tokens: 40}
"""


def selfimprove(project: Path, *args: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, COLUMNS="200")
    env.pop("SELFIMPROVE_PROGRESS", None)
    return subprocess.Popen([sys.executable, "-m", "selfimprove.cli", *args], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def run_to_end(project: Path, *args: str) -> str:
    process = selfimprove(project, *args)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output
    return output


def ran_stages(project: Path) -> list[str]:
    log = (project / "runs/t/repro.log").read_text()
    return [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")]


def new_project(root: Path, name: str) -> Path:
    """A project with the tiny loop reading local files: unlabelled prompts as Parquet, a held-out set
    in GSM8K's format (worked solution ending in '#### N') as JSONL, through the `datasets` code path."""
    from datasets import Dataset

    from selfimprove.tasks import tinyarith

    project = root / name
    project.mkdir()
    (project / "loop.yaml").write_text(TINY_LOOP)
    prompts = tinyarith.problems(seed=0, count=64, digits=2, split="train")
    Dataset.from_list([{"question": p["question"]} for p in prompts]).to_parquet(str(project / "prompts.parquet"))
    held_out = tinyarith.problems(seed=0, count=40, digits=2, split="test")
    with open(project / "test.jsonl", "w") as f:
        for p in held_out:
            a, b = p["question"][:-1].split("+")
            f.write(json.dumps({"question": p["question"], "answer": f"{a} plus {b} is {p['answer']}.\n#### {p['answer']}"}) + "\n")
    return project


def final_metrics(project: Path) -> dict:
    return {k: json.loads((project / f"runs/t/it{k}/metrics.json").read_text()) for k in (0, 1, 2)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    project = new_project(tmp_path_factory.mktemp("e2e"), "reference")
    run_to_end(project, "run", "loop.yaml")
    return project


def test_uninterrupted_run_writes_metrics_for_every_iteration(reference):
    metrics = final_metrics(reference)
    assert all(m["problems"] == 40 and m["k"] == 2 for m in metrics.values())
    assert json.loads((reference / "runs/t/it1/pairs.json").read_text())["pairs"] > 0
    # its own build of tiny-arith: its bootstrap settings are not the builtin's (Builtin.variant)
    assert ran_stages(reference)[0].startswith("bootstrap-tiny-arith-") and ran_stages(reference)[1] == "t-it0-evaluate"
    assert len(ran_stages(reference)) == 13
    report = json.loads((reference / "runs/t/metrics.json").read_text())
    assert report["it2"]["accuracy"] == final_metrics(reference)[2]["accuracy"]


def test_rerun_does_nothing_and_an_evaluate_change_reruns_only_evaluate(reference):
    before = len(ran_stages(reference))
    output = run_to_end(reference, "run", "loop.yaml")
    assert "0 stage(s) ran" in output
    assert len(ran_stages(reference)) == before
    run_to_end(reference, "run", "loop.yaml", "--set", "evaluate.k=3")
    assert sorted(ran_stages(reference)[before:]) == ["t-it0-evaluate", "t-it1-evaluate", "t-it2-evaluate", "t-report"]
    assert json.loads((reference / "runs/t/it2/metrics.json").read_text())["k"] == 3
    run_to_end(reference, "run", "loop.yaml")  # back to the reference settings for the resume test
    assert final_metrics(reference)[2]["k"] == 2


def test_show_reads_what_the_run_trained_on(reference):
    """`selfimprove show` on the real loop's files: per prompt, what pairs.json counts."""
    output = run_to_end(reference, "show", "t@1", "--json", "--limit", "3")
    page, stats = json.loads(output), json.loads((reference / "runs/t/it1/pairs.json").read_text())
    assert page["summary"]["prompts"] == stats["prompts"] and page["summary"]["with_pair"] == stats["pairs"]
    assert page["summary"]["reasons"].get("below tau", 0) == stats["dropped_below_tau"]
    assert all(len(p["samples"]) == 4 and "votes" in p["samples"][0]["fields"] for p in page["prompts"])
    across = run_to_end(reference, "show", "t@1..2", "--id", "0")
    assert "t@1, prompt 0 ─" in across and "t@2, prompt 0 ─" in across and "Traceback" not in across


def kill_group_when(project: Path, ready, timeout: float = 600) -> None:
    """Start a run in its own process group and SIGKILL the whole group once ready() is true."""
    process = selfimprove(project, "run", "loop.yaml", start_new_session=True)
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended before the kill point:\n{process.communicate()[0]}"
        assert time.time() < deadline, "kill point never reached"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_sigkill_during_generate_and_train_resumes_to_identical_metrics(reference, tmp_path):
    project = new_project(tmp_path, "killed")
    shards = project / "runs/t/it1/.samples-shards"
    kill_group_when(project, lambda: len(list(shards.glob("*/shard-*.jsonl"))) >= 3)
    done_shards = len(list(shards.glob("*/shard-*.jsonl")))
    assert 3 <= done_shards < 16, "the kill should land inside the generate stage"

    checkpoints = project / "runs/t/it1/.model-checkpoints"
    kill_group_when(project, lambda: any(checkpoints.glob("*/checkpoint-*/trainer_state.json")))
    assert not (project / "runs/t/it1/model").exists(), "the kill should land inside the train stage"

    # Ctrl-C in a terminal: SIGINT to the whole foreground group. The run stops cleanly, says how to
    # resume, and leaves no stage running.
    shards2 = project / "runs/t/it2/.samples-shards"
    process = selfimprove(project, "run", "loop.yaml", start_new_session=True)
    deadline = time.time() + 600
    while not any(shards2.glob("*/shard-*.jsonl")):
        assert process.poll() is None and time.time() < deadline, process.communicate()[0]
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "finished stages are kept" in output and "Traceback" not in output
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # nothing of the group is left running

    run_to_end(project, "run", "loop.yaml")
    stages = ran_stages(project)
    # Finished stages ran once; each interrupted stage ran once more, and only it.
    assert sum(stage.startswith("bootstrap-tiny-arith-") for stage in stages) == 1
    assert stages.count("t-it0-evaluate") == 1
    assert stages.count("t-it1-generate") == 2
    assert stages.count("t-it1-vote") == 1
    assert stages.count("t-it1-train") == 2
    assert stages.count("t-it2-generate") == 2
    log = (project / "runs/t/repro.log").read_text()
    assert "shard(s) reused from an interrupted run" in log
    resumed_train = log.split("Running stage 't-it1-train'")[-1].split("Running stage")[0]
    assert "resumed_from_step 0" not in resumed_train and "resumed_from_step" in resumed_train
    assert final_metrics(project) == final_metrics(reference)


STOP_BOUND = 30.0  # s from the signal to the last process gone: Slurm's KillWait, Kubernetes' grace period


def finished_stages(project: Path) -> set[str]:
    """Stages dvc.lock records whose outputs are all present (none while a cut-short dvc.lock awaits repair)."""
    import yaml

    try:
        stages = (yaml.safe_load((project / "dvc.lock").read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return set()
    return {name for name, node in stages.items() if all((project / o["path"]).exists() for o in node.get("outs", []))}


def started_since(project: Path, count: int) -> list[str]:
    """The stages DVC started in this project after the first `count` (repro.log keeps every run's)."""
    return ran_stages(project)[count:] if (project / "runs/t/repro.log").exists() else []


def running(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def signal_alone_when(project: Path, sig: int, running_from: str, order: list[str],
                      delay: float) -> tuple[list[str], float]:
    """Start a run in its own process group; once a stage at or after `running_from` (in DVC's `order`)
    runs, wait `delay` s and send sig to selfimprove alone, as a scheduler does. Asserts the run stops as on
    Ctrl-C; (the stages DVC started in this run, seconds from the signal to the last of its processes gone)."""
    import psutil

    offset = len(started_since(project, 0))
    process = selfimprove(project, "run", "loop.yaml", start_new_session=True)
    deadline = time.time() + 600
    while not (started := started_since(project, offset)) or order.index(started[-1]) < order.index(running_from):
        assert process.poll() is None, f"the run ended before the signal:\n{process.communicate()[0]}"
        assert time.time() < deadline, "signal point never reached"
        time.sleep(0.05)
    time.sleep(delay)
    family = psutil.Process(process.pid).children(recursive=True)  # dvc, the stage, theirs
    assert process.poll() is None, "the run ended before the signal"
    sent = time.monotonic()
    os.kill(process.pid, sig)
    output, _ = process.communicate(timeout=STOP_BOUND)
    while any(running(p) for p in family) and time.monotonic() - sent < STOP_BOUND:
        time.sleep(0.01)
    took = time.monotonic() - sent
    assert process.returncode == 128 + sig, output
    assert [line for line in output.splitlines() if "again to resume" in line] == \
        ["stopped; finished stages are kept. Run `selfimprove run loop.yaml` again to resume."], output
    assert "Traceback" not in output
    assert not [p.pid for p in family if running(p)] and took < STOP_BOUND
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # nothing of the group is left running
    return started_since(project, offset), took


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_to_selfimprove_alone_stops_the_run_as_ctrl_c_and_it_resumes(reference, tmp_path, sig):
    """A scheduler's SIGTERM (or SIGHUP) reaches selfimprove alone, at 3 seeded-random moments of one
    project's run (a stage, then a delay): each time the run exits 128 + sig within a scheduler's grace
    period with nothing left running, in one line; each rerun resumes, finished stages never run again,
    and the metrics end equal to the uninterrupted run's."""
    order = list(dict.fromkeys(ran_stages(reference)))  # DVC's order: the reference's first run
    rng = random.Random(int(sig))  # the same moments every time
    points = sorted(rng.sample(range(len(order) - 1), 3))  # the report takes a second: not a target
    project = new_project(tmp_path, "signalled")
    for point in points:
        finished = finished_stages(project)
        started, took = signal_alone_when(project, sig, order[point], order, rng.uniform(0.1, 1.5))
        print(f"{sig.name} during {started[-1]}: all gone in {took:.2f} s")
        assert not set(started) & finished, "a finished stage ran again"
    finished, count = finished_stages(project), len(started_since(project, 0))
    run_to_end(project, "run", "loop.yaml")
    assert not set(started_since(project, count)) & finished, "a finished stage ran again"
    assert final_metrics(project) == final_metrics(reference)


def test_second_run_on_a_busy_workspace_is_refused_naming_the_holder(reference):
    import fcntl

    lock = reference / "runs/.selfimprove.lock"
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.truncate(0)
        handle.write("pid 4242 running `selfimprove run loop.yaml` since 12:00:00")
        handle.flush()
        process = selfimprove(reference, "run", "loop.yaml")
        output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "busy: pid 4242 running `selfimprove run loop.yaml`" in output
    assert "Traceback" not in output


def test_a_dvc_lock_held_by_a_live_process_is_named_before_dvc_runs_and_cleared_once_it_ended(reference):
    """A dvc left running by a SIGKILL of selfimprove alone holds DVC's lock: the rerun names it in one line
    (not DVC's "is busy", nor its advice to delete the lock by hand) and starts no dvc; once it has ended,
    the next run clears its entry itself."""
    holder = subprocess.Popen(["sleep", "60"])  # a real live process
    rwlock = reference / ".dvc/tmp/rwlock"
    info = {"pid": holder.pid, "cmd": "/venv/lib/python3.11/site-packages/dvc/__main__.py repro t-report"}
    log_size = (reference / "runs/t/repro.log").stat().st_size
    try:
        rwlock.write_text(json.dumps({"write": {str(reference / "runs/t/it1/samples.jsonl"): info}}))
        process = selfimprove(reference, "run", "loop.yaml")
        output, _ = process.communicate(timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert process.returncode == 2, output
    [line] = [line for line in output.splitlines() if line.strip()]
    assert f"held by a live process: pid {holder.pid} `sleep 60` since " in line and f"`kill {holder.pid}`" in line
    assert "is busy" not in output and "Traceback" not in output
    assert (reference / "runs/t/repro.log").stat().st_size == log_size  # no dvc was started
    run_to_end(reference, "run", "loop.yaml")  # the ended holder's entry does not stop it
    assert f'"pid": {holder.pid}' not in (rwlock.read_text() if rwlock.exists() else "")


JUDGE_LOOP = """\
name: j
model: builtin:tiny-arith-judge
data: {prompts: builtin:arith/train, eval: builtin:arith/test, prompts_size: 16, eval_size: 20, digits: 2}
iterations: 1
bootstrap: {steps: 60, batch_size: 16, digits: 2, layers: 2}
stages:
  generate: {n: 2, max_new_tokens: 30}
  judge: {template: tiny-arith, n: 2, max_new_tokens: 70, response_marker: "####", max_failure_rate: 1.0}
  metajudge: {template: tiny-arith-meta, max_new_tokens: 70}
  pairs: {rule: length_band, judge_pairs: true}
  train: {loss: dpo, batch_size: 2, lr: 1.0e-4, max_length: 64}
  evaluate: {k: 2, max_new_tokens: 30, judge_size: 10}
"""


def test_meta_rewarding_loop_runs_end_to_end_and_an_unhealthy_judge_fails_in_one_line(tmp_path):
    project = tmp_path / "judged"
    project.mkdir()
    (project / "loop.yaml").write_text(JUDGE_LOOP)
    # Judgements cut to 4 tokens never reach "Score:": the judge stage must fail, saying what it wrote.
    process = selfimprove(project, "run", "loop.yaml", "--set", "judge.max_new_tokens=4",
                          "--set", "judge.max_failure_rate=0.5")
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 2, output
    assert "j-it1-judge failed" in output and "judge: 100% of 64 judgements have no score" in output
    assert "the judge wrote e.g." in output and "Traceback" not in output

    output = run_to_end(project, "run", "loop.yaml")
    log = (project / "runs/j/repro.log").read_text()
    ran = [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")]
    assert sum(stage.startswith("bootstrap-tiny-arith-judge-") for stage in ran) == 1  # kept from the failed run
    assert ran.count("j-it1-generate") == 1
    assert "j-it1-vote" not in ran
    assert ran[-6:] == ["j-it1-judge", "j-it1-metajudge", "j-it1-pairs", "j-it1-train", "j-it1-evaluate", "j-report"]
    health = json.loads((project / "runs/j/it1/judge.json").read_text())
    assert health["judge_judgements"] == 16 * 2 * 2
    assert 0 <= health["judge_parse_failure_rate"] <= 1 and "judge_score_5" in health
    records = [json.loads(line) for line in (project / "runs/j/it1/judgements.jsonl").read_text().splitlines()]
    assert len(records) == 16 and all(len(r["judgements"]) == 2 for r in records)
    metrics = json.loads((project / "runs/j/metrics.json").read_text())
    assert metrics["it0"]["judge_eval_candidates"] == 10 and "judge_agreement" in metrics["it1"]
    assert "judge_parse_failure_rate" in metrics["it1"] and "dropped_ties" in metrics["it1"]
    meta = json.loads((project / "runs/j/it1/metajudge.json").read_text())
    pairs = json.loads((project / "runs/j/it1/pairs.json").read_text())
    assert pairs["pairs"] == pairs["actor_pairs"] + meta["judge_pairs"] and "meta_battles" in metrics["it1"]
