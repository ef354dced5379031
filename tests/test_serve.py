"""openai.serve: a sampling stage starts servers on its own model, waits for them, samples through them
and stops them; against a stand-in server script (tests/servers). The real `vllm serve` on the CPU
build is in tests/test_vllm_real.py."""

import json
import sys
from pathlib import Path

import psutil
import pytest

from selfimprove.backends import open_backend
from selfimprove.backends.seeds import sample_seed
from selfimprove.core.errors import UserError
from selfimprove.loop.loopfile import load_loop

SERVER = Path(__file__).resolve().parent / "servers" / "fake_openai_server.py"


def backend(tmp_path, serve: str, endpoints: list[str], model: str = "runs/s/it1/model", **extra):
    settings = {"serve": serve, "endpoints": endpoints, "serve_timeout": 30.0, **extra}
    return open_backend({"backend": "openai", "openai": settings}, model, scratch=tmp_path / "scratch")


def started(log: Path) -> list[dict]:
    return [e for e in map(json.loads, log.read_text().splitlines()) if e.get("started")] if log.exists() else []


def test_the_stage_starts_a_server_per_endpoint_samples_and_stops_them(tmp_path):
    log = tmp_path / "servers.jsonl"
    serve = f"{sys.executable} {SERVER} --model {{model}} --port {{port}} --log {log} --start-delay 0.5"
    ours = backend(tmp_path, serve, ["http://127.0.0.1:{port}/v1"] * 2)
    texts = ours.sample(["1+1=", "2+2=", "3+3="], 2, 1.0, 1.0, 8, 8, seed=4)
    assert texts == [[f"<{p}|{sample_seed(4, i, j)}|runs/s/it1/model>" for j in range(2)]
                     for i, p in enumerate(["1+1=", "2+2=", "3+3="])]  # the stage's model, by its name
    servers = started(log)
    assert len(servers) == 2 and len({s["port"] for s in servers}) == 2
    requests = [e for e in map(json.loads, log.read_text().splitlines()) if "request" in e]
    assert len(requests) == 6 and {r["pid"] for r in requests} == {s["pid"] for s in servers}  # both served
    ours.close()
    assert not any(psutil.pid_exists(s["pid"]) and psutil.Process(s["pid"]).status() != "zombie" for s in servers)
    assert ours.usage["requests_sent"] == 6


def test_a_rerun_whose_replies_are_all_cached_starts_no_server(tmp_path):
    log = tmp_path / "servers.jsonl"
    serve = f"{sys.executable} {SERVER} --model {{model}} --port {{port}} --log {log}"
    first = backend(tmp_path, serve, ["http://127.0.0.1:{port}/v1"])
    texts = first.sample(["1+1="], 2, 1.0, 1.0, 8, 8, seed=0)
    first.close()
    again = backend(tmp_path, serve, ["http://127.0.0.1:{port}/v1"])
    assert again.sample(["1+1="], 2, 1.0, 1.0, 8, 8, seed=0) == texts
    again.close()
    assert len(started(log)) == 1 and again.usage["replies_from_cache"] == 2


def test_a_server_that_dies_or_never_answers_is_one_line_with_its_output(tmp_path):
    dies = backend(tmp_path, f"{sys.executable} -c \"print('no GPU found'); raise SystemExit(3)\"",
                   ["http://127.0.0.1:{port}/v1"])
    with pytest.raises(UserError, match=r"openai.serve: the server for http://127.0.0.1:\d+/v1 exited with status 3 "
                                        r"before answering; its output: no GPU found"):
        dies.sample(["1+1="], 1, 0.0, 1.0, 8, 8, seed=0)
    silent = backend(tmp_path, f"{sys.executable} -c \"import time; print('loading'); time.sleep(60)\"",
                     ["http://127.0.0.1:{port}/v1"], serve_timeout=2.0)
    with pytest.raises(UserError, match=r"no answer from .* within 2 s; raise openai.serve_timeout.*loading"):
        silent.sample(["1+1="], 1, 0.0, 1.0, 8, 8, seed=0)
    assert silent.servers.processes == []  # stopped on the error


def test_the_launch_command_is_tracked_and_port_placeholders_need_it(tmp_path):
    loop_file = Path(__file__).resolve().parent.parent / "loops/scpo.yaml"
    serve = "vllm serve {model} --port {port} --seed 0"
    loop = load_loop(loop_file, ["backend=openai", f"openai.serve={serve}", "openai.endpoints=http://127.0.0.1:{port}/v1"])
    from selfimprove.pipeline import compiler

    nodes = compiler.compile_loop(loop, tmp_path)[0]["stages"]
    assert "scpo.openai.serve" in nodes["scpo-it1-generate"]["params"]
    plain = compiler.compile_loop(load_loop(loop_file, ["backend=openai", "openai.endpoints=http://h:8000/v1"]),
                                  tmp_path)[0]["stages"]
    assert "scpo.openai.serve" not in plain["scpo-it1-generate"]["params"]
    with pytest.raises(UserError, match=r"\{port\} is filled only for servers the stage starts; set openai.serve"):
        load_loop(loop_file, ["backend=openai", "openai.endpoints=http://127.0.0.1:{port}/v1"])
