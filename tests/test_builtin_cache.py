"""Builtin models are built once per machine and setting: one directory and DVC stage per bootstrap
setting, and a user-level cache (selfimprove.models.builtin_cache) that a second project copies from."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selfimprove.loop.loopfile import builtin_name, load_loop
from selfimprove.models import builtin_cache
from selfimprove.pipeline import compiler
from selfimprove.results.export import iteration_model
from selfimprove.stages import bootstrap

ROOT = Path(__file__).resolve().parent.parent
TINY = "{steps: 5, batch_size: 4, digits: 2}"  # trains in well under a second


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "user-cache"
    monkeypatch.setenv("SELFIMPROVE_CACHE", str(path))
    return path


def project(root: Path, name: str, run: str = "c", settings: str = TINY) -> tuple[Path, list[str]]:
    """A project with the default loop compiled at these bootstrap settings; (it, the bootstrap command's
    arguments)."""
    folder = root / name
    folder.mkdir()
    (folder / "loop.yaml").write_text(loop_text(run, settings))
    compiler.write(folder, load_loop(folder / "loop.yaml"))
    node = next(n for name, n in yaml.safe_load((folder / "dvc.yaml").read_text())["stages"].items()
                if name.startswith("bootstrap-"))
    return folder, node["cmd"].split()[3:]


def loop_text(run: str, settings: str) -> str:
    """The default loop named run, bootstrapping its builtin with these settings."""
    text = (ROOT / "loops/scpo.yaml").read_text().replace("name: scpo\n", f"name: {run}\n", 1)
    return f"{text}\nbootstrap: {settings}\n"


def bootstrap_in(folder: Path, argv: list[str], monkeypatch) -> None:
    monkeypatch.chdir(folder)
    bootstrap.main(argv)


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_second_project_takes_the_cached_model(tmp_path, cache, monkeypatch, capsys):
    first, argv = project(tmp_path, "first")
    bootstrap_in(first, argv, monkeypatch)
    assert "parameters, final loss" in capsys.readouterr().out
    second, argv2 = project(tmp_path, "second")
    assert argv2 == argv
    monkeypatch.setattr(bootstrap, "train_tiny_arith", lambda *a: pytest.fail("built again"))
    bootstrap_in(second, argv, monkeypatch)
    assert "from the builtin cache" in capsys.readouterr().out
    out = argv[argv.index("--out") + 1]
    built, copied = first / out, second / out
    assert files(built) == files(copied) and "model.safetensors" in files(copied)
    assert not any(p.is_symlink() for p in copied.rglob("*"))  # a copy: DVC hashes the project's own
    [entry] = [p for p in (cache / "builtins").iterdir() if p.is_dir()]
    assert (entry / builtin_cache.MARKER).is_file() and entry.name.startswith(Path(out).name + "-")


def test_the_cache_directory_is_selfimprove_cache_or_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFIMPROVE_CACHE", str(tmp_path / "here"))
    assert builtin_cache.root() == tmp_path / "here" / "builtins"
    monkeypatch.delenv("SELFIMPROVE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert builtin_cache.root() == tmp_path / "xdg" / "selfimprove" / "builtins"


def test_a_partial_entry_is_rebuilt(tmp_path, cache, monkeypatch, capsys):
    first, argv = project(tmp_path, "first")
    bootstrap_in(first, argv, monkeypatch)
    [entry] = [p for p in (cache / "builtins").iterdir() if p.is_dir()]
    (entry / builtin_cache.MARKER).unlink()  # as a kill or a full disk between the files and the marker
    (entry / "model.safetensors").write_bytes(b"cut short")
    capsys.readouterr()
    second, _ = project(tmp_path, "second")
    bootstrap_in(second, argv, monkeypatch)
    assert "parameters, final loss" in capsys.readouterr().out
    out = argv[argv.index("--out") + 1]
    mended = files(entry)
    assert mended.pop(builtin_cache.MARKER) and files(second / out) == files(first / out) == mended  # rebuilt


def test_other_code_or_settings_are_another_entry(tmp_path, cache, monkeypatch):
    first, argv = project(tmp_path, "first")
    monkeypatch.chdir(first)
    resolved = {key: s.default for key, s in bootstrap.SETTINGS.items()} | yaml.safe_load(TINY)
    name = builtin_cache.entry_name(argv, resolved)
    assert name and name != builtin_cache.entry_name(argv, {**resolved, "seed": 1})
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["code"]["stages-bootstrap"] = "0" * 16
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert builtin_cache.entry_name(argv, resolved) != name
    del params["code"]
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert builtin_cache.entry_name(argv, resolved) is None  # no recorded fingerprint: no cache


def test_other_bootstrap_settings_are_another_model_and_stage(tmp_path):
    folder, default_argv = project(tmp_path, "p", run="a", settings="{}")
    assert "runs/builtin/tiny-arith" in default_argv and "builtin.tiny-arith" in default_argv
    before = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]["bootstrap-tiny-arith"]
    params_before = yaml.safe_load((folder / "params.yaml").read_text())["builtin"]["tiny-arith"]
    (folder / "b.yaml").write_text(loop_text("b", TINY))
    loop = load_loop(folder / "b.yaml")
    variant = builtin_name(loop)
    assert variant.startswith("tiny-arith-") and len(variant) == len("tiny-arith-") + 8
    compiler.write(folder, loop)
    stages = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((folder / "params.yaml").read_text())
    assert stages["bootstrap-tiny-arith"] == before and params["builtin"]["tiny-arith"] == params_before
    assert stages[f"bootstrap-{variant}"]["outs"] == [f"runs/builtin/{variant}"]
    assert f"builtin.{variant}" in stages[f"bootstrap-{variant}"]["params"]
    assert params["builtin"][variant]["steps"] == 5 and "positions" not in params["builtin"][variant]
    assert f"runs/builtin/{variant}" in stages["b-it0-evaluate"]["deps"]
    assert "runs/builtin/tiny-arith" in stages["a-it0-evaluate"]["deps"]
    assert iteration_model(folder, "b", 0)[0] == str(folder / "runs/builtin" / variant)
    assert iteration_model(folder, "a", 0)[0] == str(folder / "runs/builtin/tiny-arith")
    (folder / "c.yaml").write_text(loop_text("c", "{steps: 1500}"))
    assert builtin_name(load_loop(folder / "c.yaml")) == "tiny-arith"  # the builtin's own settings, spelt out


def test_two_projects_bootstrapping_at_once_build_once(tmp_path, cache, monkeypatch):
    """Both processes reach the lock while the test holds it (seen in /proc/locks), so neither finds the
    entry before the lock: the one that gets it first builds, the other re-checks after it and copies."""
    import fcntl

    folders = [project(tmp_path, name) for name in ("one", "two")]
    monkeypatch.chdir(folders[0][0])
    resolved = {key: s.default for key, s in bootstrap.SETTINGS.items()} | yaml.safe_load(TINY)
    lock_file = builtin_cache.root() / f".{builtin_cache.entry_name(folders[0][1], resolved)}.lock"
    lock_file.parent.mkdir(parents=True)
    env = dict(os.environ, SELFIMPROVE_CACHE=str(cache))
    with open(lock_file, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        started = [subprocess.Popen([sys.executable, "-m", "selfimprove.stages.bootstrap", *argv], cwd=folder,
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for folder, argv in folders]
        _wait_for_waiters(lock_file, 2)
    outputs = [process.communicate(timeout=600)[0] for process in started]
    assert all(process.returncode == 0 for process in started), outputs
    assert sum("parameters, final loss" in output for output in outputs) == 1, outputs
    assert sum("from the builtin cache" in output for output in outputs) == 1, outputs
    out = folders[0][1][folders[0][1].index("--out") + 1]
    assert files(folders[0][0] / out) == files(folders[1][0] / out)


def _wait_for_waiters(path: Path, count: int, timeout: float = 300) -> None:
    """Until count processes wait for the lock on path (Linux lists blocked flocks as `-> FLOCK`)."""
    import time

    inode, deadline = f":{path.stat().st_ino} ", time.time() + timeout
    while time.time() < deadline:
        locks = Path("/proc/locks").read_text().splitlines()
        if sum("->" in line and inode in line for line in locks) >= count:
            return
        time.sleep(0.1)
    pytest.fail(f"{count} processes never waited for {path}")
