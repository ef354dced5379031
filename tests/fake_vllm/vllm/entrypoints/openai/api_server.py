"""A fake `python -m vllm.entrypoints.openai.api_server` for tests without vLLM: the endpoints the warm
engine uses (selfimprove.pipeline.engine_broker), answered by the fake engine of tests/fake_vllm (transformers
on the CPU), so a text depends only on the weights, the prompt and the request's seed, as with the
offline fake.

- /v1/models, /v1/completions (text or token-id prompts; logprob_token_ids with return_tokens_as_token_ids)
- /v1/load_lora_adapter, /v1/unload_lora_adapter (peft merges the adapter into a copy of the base)
- /collective_rpc reload_weights, /reset_prefix_cache, /sleep, /wake_up, /is_sleeping

Every call is a JSON line in $FAKE_VLLM_SERVER_LOG when set. A request while asleep is refused (503), so
a missing wake-up fails loudly. Like vLLM's own server it starts a child process (its "engine core")
that does not die with it; $FAKE_VLLM_DIE_ONCE=PATH:N makes the first server that reaches its N-th
completion request exit at once (and write PATH, so a restarted server does not).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from vllm import LLM, SamplingParams


def _log(event: str, **fields) -> None:
    if os.environ.get("FAKE_VLLM_SERVER_LOG"):
        with open(os.environ["FAKE_VLLM_SERVER_LOG"], "a") as log:
            log.write(json.dumps({"time": time.time(), "pid": os.getpid(), "event": event, **fields}) + "\n")


class Engine:
    def __init__(self, args):
        self.args, self.base_name = args, args.model
        self.base = LLM(args.model, seed=args.seed, max_model_len=args.max_model_len)
        self.adapters: dict[str, LLM] = {}
        self.asleep = 0
        self.completions = 0
        self.lock = threading.Lock()  # the fake engine seeds torch's global generator per request

    def engine_for(self, name: str):
        if name == self.base_name:
            return self.base
        return self.adapters.get(name)

    def load_adapter(self, name: str, path: str) -> None:
        import copy

        from peft import PeftModel

        if not self.args.enable_lora:
            raise ValueError("LoRA is not enabled (--enable-lora)")
        rank = json.load(open(os.path.join(path, "adapter_config.json")))["r"]
        if rank > self.args.max_lora_rank:
            raise ValueError(f"LoRA rank {rank} is greater than max_lora_rank {self.args.max_lora_rank}")
        engine = copy.copy(self.base)
        engine.model = PeftModel.from_pretrained(copy.deepcopy(self.base.model), path).merge_and_unload().eval()
        self.adapters[name] = engine

    def reload(self, path: str) -> None:
        from transformers import AutoModelForCausalLM

        self.base.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.adapters.clear()  # as vLLM: reloading resets the LoRA state


def _params(body: dict) -> SamplingParams:
    return SamplingParams(n=body.get("n", 1), temperature=body.get("temperature", 1.0), top_p=body.get("top_p", 1.0),
                          max_tokens=body.get("max_tokens", 16), seed=body.get("seed"),
                          logprobs=None if body.get("logprob_token_ids") else body.get("logprobs"),
                          logprob_token_ids=body.get("logprob_token_ids"))


def _completion(engine: Engine, body: dict) -> tuple[int, dict]:
    if engine.asleep:
        return 503, {"error": {"message": "the engine is sleeping"}}
    llm = engine.engine_for(body.get("model"))
    if llm is None:
        return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
    prompt = body["prompt"]
    prompt = {"prompt_token_ids": prompt} if isinstance(prompt, list) else prompt
    ids = prompt["prompt_token_ids"] if isinstance(prompt, dict) else llm.tokenizer(prompt)["input_ids"]
    if engine.args.max_model_len and len(ids) >= engine.args.max_model_len:
        return 400, {"error": {"message": f"This model's maximum context length is {engine.args.max_model_len}"}}
    with engine.lock:
        engine.completions += 1
        _die_if_told(engine.completions)
        output = llm.generate([prompt], [_params(body)], use_tqdm=False)[0].outputs[0]
    choice = {"index": 0, "text": output.text, "finish_reason": "stop", "logprobs": None}
    if output.logprobs:
        top = output.logprobs[0]
        key = (lambda t: f"token_id:{t}") if body.get("return_tokens_as_token_ids") else llm.tokenizer.decode
        choice["logprobs"] = {"tokens": [key(output.token_ids[0])], "top_logprobs": [
            {key(token): logprob.logprob for token, logprob in top.items()}]}
    usage = {"prompt_tokens": len(ids), "completion_tokens": len(output.token_ids)}
    return 200, {"id": "cmpl-fake", "object": "text_completion", "model": body.get("model"), "choices": [choice],
                 "usage": usage}


def _die_if_told(count: int) -> None:
    told = os.environ.get("FAKE_VLLM_DIE_ONCE")
    if not told:
        return
    path, after = told.rsplit(":", 1)
    if count >= int(after) and not os.path.exists(path):
        open(path, "w").write(str(os.getpid()))
        _log("die", after=count)
        os._exit(1)


def _handler(engine: Engine):
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, payload) -> None:
            data = (json.dumps(payload) if not isinstance(payload, str) else payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            path = urlparse(self.path).path
            if path == "/v1/models":
                names = [engine.base_name, *engine.adapters]
                return self._reply(200, {"object": "list", "data": [{"id": name} for name in names]})
            if path == "/is_sleeping":
                return self._reply(200, {"is_sleeping": bool(engine.asleep)})
            self._reply(404, {"detail": "Not Found"})

        def do_POST(self):  # noqa: N802
            url = urlparse(self.path)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if url.path == "/v1/completions":
                return self._reply(*_completion(engine, body))
            _log(url.path.strip("/"), **{k: v for k, v in body.items() if k != "kwargs"}, **body.get("kwargs", {}),
                 **{k: v[0] for k, v in parse_qs(url.query).items()})
            try:
                if url.path == "/v1/load_lora_adapter":
                    engine.load_adapter(body["lora_name"], body["lora_path"])
                    return self._reply(200, f"Success: LoRA adapter '{body['lora_name']}' added successfully.")
                if url.path == "/v1/unload_lora_adapter":
                    if engine.adapters.pop(body["lora_name"], None) is None:
                        return self._reply(404, {"error": {"message": f"The lora adapter '{body['lora_name']}' "
                                                           "cannot be found."}})
                    return self._reply(200, "Success")
                if url.path == "/collective_rpc" and body.get("method") == "reload_weights":
                    engine.reload(body["kwargs"]["weights_path"])
                    return self._reply(200, {"results": [None]})
                if url.path == "/reset_prefix_cache":
                    return self._reply(200, {"success": True})
                if url.path == "/sleep":
                    engine.asleep = int(parse_qs(url.query).get("level", ["1"])[0])
                    return self._reply(200, {"status": "sleeping", "level": engine.asleep})
                if url.path == "/wake_up":
                    engine.asleep = 0
                    return self._reply(200, {"status": "awake"})
            except (ValueError, OSError) as error:
                return self._reply(400, {"error": {"message": str(error)}})
            self._reply(404, {"detail": "Not Found"})

        def log_message(self, *args):
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--enable-sleep-mode", action="store_true")
    args, _ = parser.parse_known_args()
    # vLLM's engine core: a child process that outlives a killed server (as measured on vLLM 0.32)
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=False)
    engine = Engine(args)
    _log("start", model=args.model, argv=sys.argv[1:])
    ThreadingHTTPServer((args.host, args.port), _handler(engine)).serve_forever()


if __name__ == "__main__":
    main()
