"""The OpenAI-compatible generation backend through the generate stage, against real HTTP servers on
loopback (tests/conftest.py): retries, several servers, a crash midway whose rerun re-sends nothing
that was answered, tokens and cost in generate.json, and the key never written anywhere."""

import json
from pathlib import Path

import pytest
import yaml

from selfimprove.backends.seeds import sample_seed
from selfimprove.loop.loopfile import load_loop, resolved_params
from selfimprove.core.errors import UserError
from selfimprove.stages import generate

KEY = "sk-gen-9876543210-secret"
ROOT = Path(__file__).resolve().parent.parent
MODEL = "runs/scpo/it0/model"  # never loaded: the servers are asked for it by this name


def project(tmp_path: Path, endpoints: list[str], *overrides: str) -> Path:
    """A params.yaml for loops/scpo.yaml on the openai backend: 6 prompts, n=2, shards of 4 prompts."""
    loop = load_loop(ROOT / "loops/scpo.yaml", ["backend=openai", "openai.api_key_env=GEN_KEY",
                                                "openai.concurrency=1", "openai.max_retries=3", "openai.backoff=0.01",
                                                "openai.timeout=1.0", "openai.price_per_1m_input_tokens=2.0",
                                                "openai.price_per_1m_output_tokens=10.0", "data.prompts_size=6",
                                                "generate.n=2", "generate.shard_size=4",
                                                f"openai.endpoints={json.dumps(endpoints)}", *overrides])
    params = {"scpo": resolved_params(loop)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "params.yaml"


def run_generate(params: Path) -> None:
    out = params.parent / "it1"
    generate.main(["--params", str(params), "--run", "scpo", "--iteration", "1", "--model", MODEL,
                   "--out", str(out / "samples.jsonl"), "--stats", str(out / "generate.json")])


def expected_bodies() -> list[dict]:
    """Every request of the stage: one per prompt and sample, seeded per shard (generate) and sample."""
    from selfimprove.tasks import data as data_sources

    run = yaml.safe_load(yaml.safe_dump(resolved_params(load_loop(ROOT / "loops/scpo.yaml", ["data.prompts_size=6"]))))
    records = data_sources.load_records(run["data"]["prompts"], run["data"], 6, need_answers=False)
    bodies = []
    for index in range(2):  # shard `index` samples with seed 0 * 100003 + index
        for position, record in enumerate(records[index * 4:(index + 1) * 4]):
            for j in range(2):
                bodies.append({"model": MODEL, "prompt": record["question"], "n": 1, "temperature": 0.7, "top_p": 0.9,
                               "max_tokens": 56, "seed": sample_seed(index, position, j)})
    return bodies


def written(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_a_crash_midway_then_a_rerun_sends_nothing_twice_and_counts_tokens_and_cost(server_with, tmp_path, monkeypatch):
    monkeypatch.setenv("GEN_KEY", KEY)
    crashing = server_with(["ok"] * 5, after=500)  # answers 5 requests, then fails every one
    params = project(tmp_path, [crashing.url])
    with pytest.raises(UserError, match="no answer after 4 attempts \\(last: HTTP 500\\)"):
        run_generate(params)
    assert len(crashing.answered()) == 5 and not (tmp_path / "it1/samples.jsonl").exists()
    cache = list((tmp_path / "it1/.samples-shards/requests").rglob("*.json"))
    assert len(cache) == 5 and KEY not in written(tmp_path)

    # The rerun goes to two other servers (the cache does not care which server answered), one of them
    # flaky: rate-limited, dropping a connection, failing, too slow once.
    flaky, steady = server_with([429, "drop", 503, "slow"]), server_with([])
    params = project(tmp_path, [flaky.url, steady.url])
    run_generate(params)
    bodies = expected_bodies()
    answered_twice = [b for b in flaky.answered() + steady.answered() if b in crashing.answered()]
    assert answered_twice == []
    assert sorted(json.dumps(b, sort_keys=True) for b in crashing.answered() + flaky.answered() + steady.answered()) \
        == sorted(json.dumps(b, sort_keys=True) for b in bodies)  # every request answered exactly once over both runs
    assert flaky.requests and steady.requests  # both servers shared the work
    rows = [json.loads(line) for line in (tmp_path / "it1/samples.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in rows] == [f"<{b['prompt']}|{b['seed']}>" for b in bodies]

    stats = json.loads((tmp_path / "it1/generate.json").read_text())
    prompt_tokens = sum(len(b["prompt"]) for b in bodies)
    assert stats["generate_samples"] == 12 and stats["generate_prompt_tokens"] == prompt_tokens
    assert stats["generate_completion_tokens"] == 3 * 12  # the crashed run's 5 replies count: they were paid for
    assert stats["generate_cost_usd"] == pytest.approx((prompt_tokens * 2.0 + 36 * 10.0) / 1e6)
    assert stats["generate_replies_from_cache"] == 5
    assert stats["generate_requests_sent"] == len(flaky.requests) + len(steady.requests) == 7 + 4  # 4 retries

    assert all(r["auth"] == f"Bearer {KEY}" for s in (crashing, flaky, steady) for r in s.requests)
    assert KEY not in written(tmp_path) and "GEN_KEY" in params.read_text()
    assert not (tmp_path / "it1/.samples-shards").exists()  # the scratch area goes once the output is written


def test_chat_template_sends_chat_messages_and_greedy_sends_one_request_per_prompt(server_with, tmp_path):
    from selfimprove.backends import open_backend

    server = server_with([])
    settings = {"endpoints": [server.url], "api_model": "served-name", "concurrency": 2}
    chat = open_backend({"backend": "openai", "chat_template": True, "openai": settings}, MODEL)
    assert chat.sample(["q1", "q2"], 5, 0.0, 1.0, 16, 8, seed=3) == [["judged q1. Score: 5"], ["judged q2. Score: 5"]]
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"] * 2
    first = next(r for r in server.requests if r["body"]["messages"][0]["content"] == "q1")  # 2 in flight: any order
    assert first["body"] == {"model": "served-name", "n": 1, "temperature": 0.0, "top_p": 1.0,
                                          "max_tokens": 16, "seed": sample_seed(3, 0, 0), "messages": [{"role": "user", "content": "q1"}]}
    chat.close()
    assert chat.usage == {"requests_sent": 2, "replies_from_cache": 0, "prompt_tokens": 0, "completion_tokens": 0}
    with pytest.raises(UserError, match="cannot read next-token probabilities over HTTP"):
        chat.choice_probs(["q"], ["1", "2"])


def test_openai_backend_settings_are_checked_at_load():
    with pytest.raises(UserError) as error:
        load_loop(ROOT / "loops/self_rewarding.yaml", ["backend=openai", f"openai.api_key_env={KEY}",
                                                       "judge.mode=expected", "openai.endpoints=localhost:8000"])
    lines = error.value.lines
    assert any("openai.endpoints: must be base URLs, e.g. endpoints: [http://localhost:8000/v1]" in line for line in lines)
    assert any("openai.api_key_env: is the NAME of an environment variable" in line for line in lines)
    assert any("backend: openai cannot read token probabilities" in line for line in lines)
    assert all(line.startswith("--set ") for line in lines)  # each names the --set that gave the value...
    assert not any(KEY in line for line in lines)  # ...and never the value: the pasted key is not echoed
    with pytest.raises(UserError, match="backend: openai needs openai.endpoints"):
        load_loop(ROOT / "loops/scpo.yaml", ["backend=openai"])
