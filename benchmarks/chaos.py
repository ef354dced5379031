"""Faults across a 2-iteration loop: SIGKILLs, SIGTERM and SIGHUP, a full disk, two loops at once, damaged outputs.

    python benchmarks/chaos.py [--parts kills,signals,disk,concurrent,damage] [--kills 20] [--signals 12] [--seed 0]

Runs the tiny loop once uninterrupted (the reference), then each part in a fresh project:
- kills: `selfimprove run` is started in its own process group and SIGKILLed --kills times, each time
  once a randomly chosen stage (or a later one) is running plus a random 0.1-1.5 s (each restart
  resumes), then left to finish. Prints the kills that landed while the run was working, the final
  metrics against the reference (must be equal), and how many times a stage that had already finished
  (recorded in dvc.lock with its outputs present before the attempt) ran again (must be 0).
- signals: as kills, but SIGTERM and SIGHUP in turn (--signals times), sent to the `selfimprove run`
  process alone, as a scheduler reclaiming the machine does. Prints the time from each signal to the
  last of the run's processes gone (max, median, by stage), the exit codes (must be 128 + the signal),
  the attempts that did not say how to resume in one line or printed a traceback, the processes left
  behind (must be none), finished stages run again (must be 0) and whether the final metrics equal the
  reference's.
- disk: the project lives on a 256 MiB tmpfs in a private mount namespace (needs root and `unshare`);
  the disk is filled while generate writes its shards, while train writes a checkpoint, and (an
  injected ENOSPC halfway through DVC's write, since no timing can hit it) while DVC writes dvc.lock.
  Prints what the user saw, the half-written files left behind, and whether the rerun finished with
  the reference's metrics.
- concurrent: two different loops started at once in one project: the second must be refused in one
  line, the first finish; then the second runs; dvc.lock and params.yaml must be whole, both runs'
  metrics equal their references.
- damage: in a finished project, a model directory deleted, an output truncated, a builtin model's
  weights overwritten, and a model deleted with DVC's cache gone too: each rerun must notice, redo or
  restore the right stages only, and end with the reference's metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

LOOP = """\
name: c
model: builtin:tiny-arith
data: {prompts: builtin:arith/train, eval: builtin:arith/test, prompts_size: 48, eval_size: 40, digits: 2}
iterations: 2
bootstrap: {steps: 150, batch_size: 32, digits: 2, layers: 1}
stages:
  generate: {n: 4, max_new_tokens: 40, shard_size: 4, batch_size: 16}
  pairs: {min_votes: 0.25}
  train: {batch_size: 2, save_steps: 2, lr: 1.0e-4, max_length: 64}
  evaluate: {k: 2, max_new_tokens: 40}
"""
OTHER_LOOP = LOOP.replace("name: c", "name: d").replace("min_votes: 0.25", "min_votes: 0.5")


def start(project: Path, loop: str = "loop.yaml", output=subprocess.DEVNULL, env: dict | None = None) -> subprocess.Popen:
    env = {k: v for k, v in dict(os.environ, COLUMNS="250", **(env or {})).items() if k != "SELFIMPROVE_PROGRESS"}
    return subprocess.Popen([sys.executable, "-m", "selfimprove.cli", "run", loop], cwd=project, env=env,
                            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def finished_stages(project: Path) -> set[str]:
    """Stages dvc.lock records whose outputs are all present."""
    lock = project / "dvc.lock"
    if not lock.exists():
        return set()
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {name for name, node in stages.items() if all((project / o["path"]).exists() for o in node.get("outs", []))}


def started_stages(project: Path, offset: int, run: str = "c") -> tuple[list[str], int]:
    """Stages DVC started since byte `offset` of the run's log, and the new offset."""
    log = project / f"runs/{run}/repro.log"
    if not log.exists():
        return [], offset
    text = log.read_text(errors="replace")
    return [line.split("'")[1] for line in text[offset:].splitlines() if line.startswith("Running stage '")], len(text)


def restored_stages(project: Path, offset: int, run: str = "c") -> list[str]:
    """Stages DVC checked out from its run cache (not run) since byte `offset` of the run's log."""
    text = (project / f"runs/{run}/repro.log").read_text(errors="replace")[offset:]
    return [line.split("'")[1] for line in text.splitlines() if "is cached - skipping run" in line]


def metrics(project: Path, run: str = "c") -> dict:
    return {k: json.loads((project / f"runs/{run}/it{k}/metrics.json").read_text()) for k in (0, 1, 2)}


def wait_for(process: subprocess.Popen, ready, timeout: float = 600) -> bool:
    """Poll until ready() or the process ends; whether ready() came first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(0.1)
    return False


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def kills(args, root: Path, reference: Path) -> None:
    rng = random.Random(args.seed)
    chaos = new_project(root / "kills")
    order, _ = started_stages(reference, 0)  # the stages in the order DVC runs them
    # Kill moments spread over the whole loop: each attempt waits until a chosen stage (or a later one)
    # is running, then kills after a random delay; the choices are sorted, so the kills move through
    # the loop as it resumes. (Killing at random wall-clock moments alone would land every kill in the
    # first long stage.)
    plan = sorted(rng.randrange(len(order) - 1) for _ in range(args.kills))  # the report takes a second: not a target
    landed, redone, offset, attempts, killed_in, failed = 0, [], 0, 0, [], []
    for target in plan:
        before = finished_stages(chaos)
        process = start(chaos)
        attempts += 1
        wait_for_stage(process, chaos, order, target, offset)
        time.sleep(rng.uniform(0.1, 1.5))
        working = process.poll() is None
        if working:
            os.killpg(process.pid, signal.SIGKILL)
            landed += 1
        process.wait()
        ran, offset = started_stages(chaos, offset)
        redone += [name for name in ran if name in before]
        if working:
            killed_in.append(ran[-1] if ran else "(start-up)")
        elif process.returncode != 0:  # failed on its own after the earlier kills: what the rerun must never do
            failed.append(f"attempt {attempts} in {ran[-1] if ran else '(start-up)'}, exit {process.returncode}")
        else:
            print(f"the run finished before kill {landed + 1}")
            break
    before = finished_stages(chaos)
    final = start(chaos).wait()
    ran, offset = started_stages(chaos, offset)
    redone += [name for name in ran if name in before]
    same = final == 0 and metrics(chaos) == metrics(reference)
    print(f"[kills] landed while running: {landed} (attempts {attempts}); final run exit {final}")
    print(f"[kills] final metrics equal the uninterrupted run's: {same}")
    print("[kills] killed in: " + ", ".join(f"{name} x{killed_in.count(name)}" for name in dict.fromkeys(killed_in)))
    print(f"[kills] finished stages run again: {len(redone)} {sorted(set(redone))}")
    print(f"[kills] resumed runs that failed on their own: {len(failed)} {failed}")


def wait_for_stage(process: subprocess.Popen, project: Path, order: list[str], target: int, offset: int) -> None:
    """Return once the stage order[target] or a later one runs (started after byte `offset` of the log),
    or the run has ended."""
    seen, running = offset, None
    while process.poll() is None:
        ran, seen = started_stages(project, seen)
        running = ran[-1] if ran else running
        if running in order and order.index(running) >= target:
            return
        time.sleep(0.2)


def signals(args, root: Path, reference: Path) -> None:
    rng = random.Random(args.seed)
    project = new_project(root / "signals")
    order, _ = started_stages(reference, 0)
    plan = sorted(rng.randrange(len(order) - 1) for _ in range(args.signals))  # spread as in kills
    stops, redone, offset, problems = [], [], 0, []  # stops: (signal, stage, seconds to all gone)
    for attempt, target in enumerate(plan, 1):
        sig = signal.SIGTERM if attempt % 2 else signal.SIGHUP
        before = finished_stages(project)
        process = start(project, output=subprocess.PIPE)
        wait_for_stage(process, project, order, target, offset)
        time.sleep(rng.uniform(0.1, 1.5))
        if process.poll() is not None:
            problems.append(f"attempt {attempt}: the run ended before the signal, exit {process.returncode}")
            ran, offset = started_stages(project, offset)
            continue
        took, said, left = signal_alone(process, sig)
        ran, offset = started_stages(project, offset)
        redone += [name for name in ran if name in before]
        stops.append((sig.name, ran[-1] if ran else "(start-up)", took))
        if process.returncode != 128 + sig or left or said:
            problems.append(f"attempt {attempt} ({sig.name} in {stops[-1][1]}): exit {process.returncode}, "
                            f"left running {left}, {said}")
    before = finished_stages(project)
    final = start(project).wait()
    ran, offset = started_stages(project, offset)
    redone += [name for name in ran if name in before]
    took = sorted(t for _, _, t in stops)
    print(f"[signals] sent while running: {len(stops)} (SIGTERM {sum(s == 'SIGTERM' for s, _, _ in stops)}, "
          f"SIGHUP {sum(s == 'SIGHUP' for s, _, _ in stops)}); attempts with a problem: {len(problems)} {problems}")
    if took:
        print(f"[signals] signal to the last process gone: max {took[-1]:.2f} s, "
              f"median {statistics.median(took):.2f} s")
    kinds: dict[str, list[float]] = {}
    for _, stage, seconds in stops:
        kinds.setdefault(stage_kind(stage), []).append(seconds)
    print("[signals] by stage: " + ", ".join(f"{kind} x{len(t)} max {max(t):.2f} s" for kind, t in kinds.items()))
    print(f"[signals] finished stages run again: {len(redone)} {sorted(set(redone))}")
    print(f"[signals] final run exit {final}; final metrics equal the uninterrupted run's: "
          f"{final == 0 and metrics(project) == metrics(reference)}")


def stage_kind(name: str) -> str:
    """generate for c-it1-generate, bootstrap for bootstrap-tiny-arith-<hash>."""
    if name.startswith("bootstrap-"):
        return "bootstrap"
    return name.rsplit("-", 1)[-1] if name.startswith("c-") else name


def signal_alone(process: subprocess.Popen, sig: int) -> tuple[float, str, list[int]]:
    """Send sig to the run's own pid only and wait for the run and everything it started to be gone;
    (seconds from the signal to the last process gone, what was wrong with its output or '', the pids
    still running after 60 s, which are then killed)."""
    import psutil

    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    sent = time.monotonic()
    os.kill(process.pid, sig)
    output = process.communicate(timeout=60)[0].decode(errors="replace")
    while any(running(p) for p in family) and time.monotonic() - sent < 60:
        time.sleep(0.01)
    took = time.monotonic() - sent
    left = [p.pid for p in family if running(p)]
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.kill()
    resume = [line for line in output.splitlines() if "again to resume" in line]
    said = ("a traceback; " if "Traceback" in output else "") + ("" if len(resume) == 1 else
                                                                   f"{len(resume)} lines saying how to resume")
    return took, said, left


def running(process) -> bool:
    """Whether a process (psutil) still runs; a zombie has ended."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


HOOKS = Path(__file__).resolve().parent / "chaos_hooks"  # sitecustomize.py: the injected ENOSPC


def disk(args, root: Path, reference: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        print("[disk] skipped: a private tmpfs needs root and unshare (run as root)")
        return
    if not args.inner_disk:  # re-run this part inside a private mount namespace, where mounting is allowed
        code = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, __file__,
                               "--parts", "disk", "--inner-disk", "--root", str(root)]).returncode
        if code:
            print(f"[disk] failed (exit {code})")
        return
    mount = root / "tmpfs"
    mount.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "none", str(mount)], check=True)
    project = new_project(mount)
    log = root / "disk-output.txt"
    log.unlink(missing_ok=True)

    def fill() -> None:
        """Write zeros until the tmpfs refuses even one byte."""
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        for size in (2**20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
        os.close(fd)

    def case(name: str, stage: str, ready) -> None:
        offset = len(log.read_text()) if log.exists() else 0
        with open(log, "a") as output:
            process = start(project, output=output)
            seen = 0

            def at_stage():
                nonlocal seen
                ran, seen = started_stages(project, 0)
                return bool(ran) and ran[-1] == stage and ready()

            hit = wait_for(process, at_stage)
            if hit:
                fill()
            code = process.wait()
        (mount / "filler").unlink(missing_ok=True)
        said = [line for line in log.read_text()[offset:].splitlines() if line.strip()]
        leftovers = sorted(str(p.relative_to(project)) for p in project.rglob("*.tmp"))
        print(f"[disk] {name}: disk filled during {stage}: {hit}; exit {code}; output lines {len(said)}")
        print(f"[disk] {name}: the user saw: {said[-1] if said else '(nothing)'}")
        print(f"[disk] {name}: temporary files left: {leftovers or 'none'}")

    case("shard", "c-it1-generate", lambda: any(project.glob("runs/c/it1/.samples-shards/*/shard-*.jsonl")))
    case("model", "c-it1-train", lambda: any(project.glob("runs/c/it1/.model-checkpoints/*/checkpoint-*")))
    # dvc.lock: the second lock write of the next `selfimprove run` keeps half the file and fails.
    env = {"CHAOS_LOCK_WRITE": "2", "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")]))}
    offset = len(log.read_text())
    with open(log, "a") as output:
        code = start(project, output=output, env=env).wait()
    said = [line for line in log.read_text()[offset:].splitlines() if line.strip()]
    from selfimprove.pipeline import dvclock

    damage = dvclock.check(project / "dvc.lock")
    print(f"[disk] lock: exit {code}; dvc.lock afterwards: {damage or 'whole'}")
    print(f"[disk] lock: the user saw: {said[-1] if said else '(nothing)'}")
    offset = len(log.read_text())
    log_offset = len((project / "runs/c/repro.log").read_text())
    with open(log, "a") as output:
        final = start(project, output=output).wait()
    said = [line for line in log.read_text()[offset:].splitlines() if "damaged" in line]
    print(f"[disk] rerun: {said[0] if said else 'no repair needed'}")
    ran, _ = started_stages(project, log_offset)
    print(f"[disk] rerun: exit {final}; ran {ran}; restored from the run cache "
          f"{restored_stages(project, log_offset)}")
    print(f"[disk] final metrics equal the uninterrupted run's: {final == 0 and metrics(project) == metrics(reference)}")
    subprocess.run(["umount", str(mount)])


def concurrent(args, root: Path, reference: Path, other_reference: Path) -> None:
    project = new_project(root / "concurrent")
    (project / "other.yaml").write_text(OTHER_LOOP)
    first = start(project, "loop.yaml", output=subprocess.PIPE)
    second = start(project, "other.yaml", output=subprocess.PIPE)
    outputs = [p.communicate()[0].decode(errors="replace") for p in (first, second)]
    codes = [first.returncode, second.returncode]
    refused = [i for i, code in enumerate(codes) if code != 0]
    print(f"[concurrent] exits: loop.yaml {codes[0]}, other.yaml {codes[1]}")
    for i in refused:
        lines = [line for line in outputs[i].splitlines() if line.strip()]
        print(f"[concurrent] refused in {len(lines)} line(s): {lines[-1] if lines else ''}")
    later = start(project, "other.yaml" if 1 in refused else "loop.yaml").wait()
    import yaml

    from selfimprove.pipeline import dvclock

    whole = all(isinstance(yaml.safe_load((project / name).read_text()), dict) for name in ("params.yaml", "dvc.yaml"))
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=project, capture_output=True, text=True)
    print(f"[concurrent] the refused loop run afterwards: exit {later}")
    print(f"[concurrent] dvc.lock {dvclock.check(project / 'dvc.lock') or 'whole'}; params.yaml and dvc.yaml whole: "
          f"{whole}; dvc status exit {status.returncode}, up to date: {'up to date' in status.stdout}")
    print(f"[concurrent] metrics equal the references: c {metrics(project) == metrics(reference)}, "
          f"d {metrics(project, 'd') == metrics(other_reference, 'd')}")


def damage(args, root: Path, reference: Path) -> None:
    project = root / "damage"
    shutil.copytree(reference, project, symlinks=True)
    cases = [
        ("model directory deleted", lambda: shutil.rmtree(project / "runs/c/it1/model")),
        ("output cut short", lambda: truncate(project / "runs/c/it1/samples.jsonl")),
        ("builtin model's weights overwritten", lambda: overwrite(project / "runs/builtin/tiny-arith/model.safetensors")),
        ("model deleted and DVC's cache gone", lambda: (shutil.rmtree(project / ".dvc/cache"),
                                                       shutil.rmtree(project / "runs/c/it2/model"))),
    ]
    for name, harm in cases:
        harm()
        offset = len((project / "runs/c/repro.log").read_text())
        code = start(project).wait()
        ran, _ = started_stages(project, offset)
        print(f"[damage] {name}: exit {code}; ran {ran or 'nothing'}; restored from the run cache "
              f"{restored_stages(project, offset) or 'nothing'}; metrics equal: {metrics(project) == metrics(reference)}")


def truncate(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def overwrite(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\xff" * 64)


def new_project(parent: Path, name: str = "project") -> Path:
    project = parent / name
    project.mkdir(parents=True)
    (project / "loop.yaml").write_text(LOOP)
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="kills,signals,disk,concurrent,damage")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--signals", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--inner-disk", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    parts = args.parts.split(",")
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="chaos-"))
    reference = root / "reference" / "project"
    if not reference.exists():
        new_project(root / "reference")
        started = time.monotonic()
        assert start(reference).wait() == 0, "the reference run failed"
        print(f"reference run: {time.monotonic() - started:.0f} s")
    if "kills" in parts:
        kills(args, root, reference)
    if "signals" in parts:
        signals(args, root, reference)
    if "disk" in parts:
        disk(args, root, reference)
    if "concurrent" in parts:
        other_reference = root / "reference-other" / "project"
        other_reference.mkdir(parents=True)
        (other_reference / "other.yaml").write_text(OTHER_LOOP)
        assert start(other_reference, "other.yaml").wait() == 0, "the other loop's reference run failed"
        concurrent(args, root, reference, other_reference)
    if "damage" in parts:
        damage(args, root, reference)
    if not args.inner_disk:
        print(f"projects: {root}")


if __name__ == "__main__":
    main()
