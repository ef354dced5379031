"""A stand-in for `vllm serve`, started by openai.serve in tests: serves one model name on a port.

    python tests/servers/fake_openai_server.py --model M --port P [--log FILE] [--start-delay S]

GET /v1/models lists the model; POST /v1/completions answers `<prompt|seed|model>`. Each start and
request is appended to --log as a JSON line with this process's pid."""

import argparse
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--log")
parser.add_argument("--start-delay", type=float, default=0.0)
args = parser.parse_args()


def record(entry: dict) -> None:
    if args.log:
        with open(args.log, "a") as log:
            log.write(json.dumps({"pid": os.getpid(), "port": args.port, **entry}) + "\n")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *_):
        pass

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"data": [{"id": args.model}]}) if self.path == "/v1/models" else self._send(404, {})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("model") != args.model:
            return self._send(404, {"error": {"message": f"model {body.get('model')} does not exist"}})
        record({"request": body["prompt"], "seed": body["seed"]})
        self._send(200, {"choices": [{"text": f"<{body['prompt']}|{body['seed']}|{args.model}>"}],
                         "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 3}})


time.sleep(args.start_delay)
record({"started": True})
ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
