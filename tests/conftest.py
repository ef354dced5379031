"""Shared fixtures: a tiny untrained model directory, the fake `vllm` module on the import path, and a
scripted OpenAI-compatible server on loopback."""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

FAKE_VLLM = Path(__file__).resolve().parent / "fake_vllm"


@pytest.fixture(scope="session", autouse=True)
def builtin_cache(tmp_path_factory):
    """The session's cache of built builtins (selfimprove.models.builtin_cache), here and in the processes
    tests start, set before any module-scoped fixture bootstraps: no test writes to the user's ~/.cache.
    Shared by the session as the user's is by a machine's projects (tests/test_builtin_cache.py sets its own)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SELFIMPROVE_CACHE", str(tmp_path_factory.mktemp("selfimprove-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 1-layer tiny-arith model with random weights (built in about a second): real tokenizer and
    transformers model, meaningless texts; enough to compare backends on the same weights."""
    from selfimprove.stages.untrained import save_untrained

    return save_untrained(tmp_path_factory.mktemp("tiny") / "model", layers=1)


@pytest.fixture
def fake_vllm(monkeypatch):
    """`import vllm` finds tests/fake_vllm, here and in processes started from here (PYTHONPATH)."""
    monkeypatch.syspath_prepend(str(FAKE_VLLM))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAKE_VLLM), os.environ.get("PYTHONPATH")])))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    import vllm

    return vllm


class Server:
    """An OpenAI-compatible server on loopback. Each request gets the next scripted behaviour: an HTTP
    status, 'slow' (1.5 s), 'drop' (the connection closed without a reply) or 'ok'; past the script,
    `after` (default 'ok'). Replies are deterministic: a chat reply quotes the prompt and scores it; a
    /completions reply is `<prompt|seed>` and reports usage (prompt tokens = characters, 3 completion
    tokens). Every request is recorded with its path, body, Authorization header and outcome."""

    def __init__(self, script: list, after="ok"):
        self.script, self.after, self.requests = list(script), after, []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    action = server.script.pop(0) if server.script else server.after
                    server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization"),
                                            "action": action})
                if action == "drop":
                    self.connection.close()  # no status line at all: a dropped connection
                    return
                if action == "slow":
                    time.sleep(1.5)  # the client has given up by now: its reply goes nowhere
                    self.close_connection = True
                    return
                if isinstance(action, int):
                    self.send_response(action)
                    self.end_headers()
                    self.wfile.write(json.dumps({"error": {"message": f"scripted {action}"}}).encode())
                    return
                reply = json.dumps(server.reply(self.path, body)).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/v1"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @staticmethod
    def reply(path: str, body: dict) -> dict:
        if path.endswith("/chat/completions"):
            prompt = body["messages"][0]["content"]
            return {"choices": [{"message": {"content": f"judged {prompt}. Score: {5 - i}"}} for i in range(body["n"])]}
        return {"choices": [{"text": f"<{body['prompt']}|{body['seed']}>"}],
                "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 3}}

    def answered(self) -> list[dict]:
        """The bodies of the requests this server answered (status 200, not too slow for the client)."""
        return [r["body"] for r in self.requests if r["action"] == "ok"]

    def close(self):
        self.http.shutdown()


@pytest.fixture
def server_with():
    servers = []

    def start(script, after="ok"):
        servers.append(Server(script, after))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
