"""The OpenAI-compatible judge client against a real HTTP server on loopback: retries on 429/5xx, slow
replies and dropped connections; no retry on 401; the key sent in the header and never persisted."""

import json
from pathlib import Path

import pytest

from selfimprove.loop.loopfile import load_loop, resolved_params
from selfimprove.core.errors import UserError
from selfimprove.backends.openai_client import Endpoint
from selfimprove.core.registry import stage_defaults
from selfimprove.stages.judge import judge

KEY = "sk-test-0123456789-secret"
ROOT = Path(__file__).resolve().parent.parent


def test_retries_on_429_5xx_slow_and_dropped_replies_then_answers_in_order(server_with, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    server = server_with([429, 503, "drop", "slow"])
    endpoint = Endpoint(server.url, "judge-model", "JUDGE_KEY", concurrency=1, timeout=1.0, max_retries=5, backoff=0.01)
    texts = endpoint.complete(["q1", "q2"], n=2, temperature=0.7, top_p=0.9, max_tokens=32)
    assert texts == [["judged q1. Score: 5", "judged q1. Score: 4"], ["judged q2. Score: 5", "judged q2. Score: 4"]]
    assert len(server.requests) == 6  # q1: 429, 503, dropped, too slow (timed out), then answered; q2 at once
    assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests)
    assert server.requests[-1]["body"] == {"model": "judge-model", "n": 2, "temperature": 0.7, "top_p": 0.9,
                                           "max_tokens": 32, "messages": [{"role": "user", "content": "q2"}]}


def test_a_rejected_key_fails_at_once_and_a_dead_server_after_the_retries(server_with, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    server = server_with([401])
    with pytest.raises(UserError, match="HTTP 401 \\(scripted 401\\)") as error:
        Endpoint(server.url, "m", "JUDGE_KEY", backoff=0.01).complete(["q"], 1, 0.0, 1.0, 8)
    assert len(server.requests) == 1 and KEY not in str(error.value)
    server = server_with([500] * 10)
    with pytest.raises(UserError, match="no answer after 3 attempts \\(last: HTTP 500\\)"):
        Endpoint(server.url, "m", "JUDGE_KEY", max_retries=2, backoff=0.01).complete(["q"], 1, 0.0, 1.0, 8)
    with pytest.raises(UserError, match="JUDGE_KEY is not set"):
        monkeypatch.delenv("JUDGE_KEY")
        Endpoint(server.url, "m", "JUDGE_KEY")


def test_judge_stage_through_an_endpoint_never_persists_the_key(server_with, monkeypatch, tmp_path):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    server = server_with([503])
    settings = stage_defaults("judge")
    settings.update(source="openai", endpoint=server.url, api_model="judge-model", api_key_env="JUDGE_KEY", n=2,
                    max_retries=2, timeout=5.0)
    rows = [{"id": 0, "prompt": "Q", "question": "What is 2+2?", "gold": "4", "sample": j, "extra": False,
             "completion": c} for j, c in enumerate(["It is 4.", "It is 5."])]
    records, figures = judge(settings, rows, "openai", tmp_path / "judgements.jsonl")
    assert records[0]["mean_scores"] == [4.5, 4.5] and figures["judge_parse_failure_rate"] == 0.0
    assert "What is 2+2?" in server.requests[-1]["body"]["messages"][0]["content"]  # the additive rubric, filled
    loop = load_loop(ROOT / "loops/self_rewarding.yaml", ["judge.source=openai", f"judge.endpoint={server.url}",
                                                          "judge.api_model=judge-model", "judge.api_key_env=JUDGE_KEY"])
    written = json.dumps(resolved_params(loop)) + "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert KEY not in written and "JUDGE_KEY" in written


def test_an_openai_judge_needs_endpoint_and_model_and_a_variable_name_not_a_key():
    with pytest.raises(UserError) as error:
        load_loop(ROOT / "loops/self_rewarding.yaml", ["judge.source=openai", f"judge.api_key_env={KEY}"])
    lines = error.value.lines
    assert any("judge.source openai needs judge.endpoint" in line for line in lines)
    assert any("judge.source openai needs judge.api_model" in line for line in lines)
    assert any("NAME of an environment variable" in line for line in lines)
