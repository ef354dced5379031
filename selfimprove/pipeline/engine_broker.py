"""The run's warm engine: one vLLM server for a whole `selfimprove run` (`engine: warm`), following the
policy across stages and iterations, started only when a stage first needs it.

The runner opens a Broker around its `dvc repro`: a small HTTP service on 127.0.0.1 whose address (with
a token) goes to the stages in SELFIMPROVE_ENGINE (selfimprove.core.warm_link). A sampling stage asks it
for its model (/acquire); the broker then

- starts the server on the model's root the first time (a run whose stages are all cached starts none);
- restarts it once if it died (the stage then resends what never came back: its replies are cached);
- wakes it if it sleeps, and reloads the weights after a level-2 sleep;
- makes the model current: a different root's whole weights reloaded in place (/collective_rpc
  reload_weights), and a LoRA chain served as one stacked adapter (selfimprove.models.lora_stack) under
  a name derived from the model's identity, so a changed model can never be served under an old name;
- resets the prefix cache after every change of weights, so no KV block of an earlier policy is reused
  (vLLM leaves this to its user: vllm#46125);
- answers with the URL and the name to send requests to, or says why the stage should start its own
  engine instead (said once per run on the terminal: an architecture the server does not hold, an
  adapter the stacking cannot express, a chain over the LoRA rank the server was sized for).

A stage about to load a model of its own (training) asks for room (/room): on a GPU the server is put to
sleep (level 1 when only LoRA adapters change, level 2 otherwise) and woken by the next /acquire.

Every event is a line in runs/RUN/engine/events.jsonl (starts, reloads, sleeps, restarts); the server's
output is in runs/RUN/engine/server.log. The broker never changes what a stage computes, so nothing of
it is in params.yaml or dvc.lock: the cache is the same with and without it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from selfimprove.core.errors import UserError
from selfimprove.core.warm_link import ENV
from selfimprove.pipeline.engine_server import EngineServer, lora_slot_rank, stop_marked

# What a whole model's config may differ in and still be reloaded into the server's: reload_weights
# replaces the weights only, so everything else the engine computes with must match; the name, the dtype
# it was saved in, the library version and the KV-cache flag training turns off need not.
CONFIG_NOISE = {"_name_or_path", "name_or_path", "torch_dtype", "dtype", "transformers_version", "use_cache"}


class Broker:
    def __init__(self, project: Path, run: str, vllm: dict, settings: dict, lora_rank: int, lora_only: bool,
                 console):
        self.project, self.run, self.vllm, self.settings = Path(project).resolve(), run, vllm, settings
        self.console = console
        self.folder = self.project / "runs" / run / "engine"
        self.token = secrets.token_hex(8)
        self.lora_rank = (settings["max_lora_rank"] or lora_slot_rank(lora_rank)) if lora_rank else 0
        # Level 1 keeps the weights in CPU memory: right when only adapters change. Level 2 drops them: the
        # next model is a new whole model anyway, reloaded after the wake.
        self.sleep_level = 1 if lora_only else 2
        self.server: EngineServer | None = None
        self.root = None  # the whole model whose weights the server holds
        self.adapter = None  # the stacked adapter's name loaded on it
        self.asleep, self.weights_valid, self.restarts = 0, True, 0
        self.said: set[str] = set()
        self._http = HTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._http.serve_forever, name="engine-broker", daemon=True)

    # -- the run's side
    def __enter__(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        # A run of this project killed with SIGKILL before its engine stopped: stop what it left.
        if left := stop_marked(f"{self.project}/", 10.0):
            self._event("leftovers_stopped", processes=left)
        self._thread.start()
        return self

    def env(self) -> dict:
        return {ENV: f"http://127.0.0.1:{self._http.server_address[1]}/{self.token}"}

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self._event("stop")
            self.server = None
        self._http.shutdown()
        self._http.server_close()

    # -- the stages' side (one request at a time: the HTTP service has one thread)
    def acquire(self, model: str, revision: str | None) -> dict:
        from selfimprove.models.lora_stack import Unstackable, chain

        root, root_revision, adapters = chain(model, self.project)
        if revision and not adapters:
            root_revision = revision
        if adapters and not self.lora_rank:
            return self._fallback(f"{model} is a LoRA adapter and the loop trains none; the engine was started "
                                  "without LoRA")
        self._ensure_running(root, root_revision)
        if self.asleep:
            self._wake()
        if root != self.root or not self.weights_valid:
            if reason := self._reload(root):
                return self._fallback(reason)
        if not adapters:
            return self._answer(self.server.model, root, root_revision)
        try:
            name = self._load_adapter(model, revision, adapters, root)
        except Unstackable as why:
            return self._fallback(f"{why}: it cannot be served as one adapter")
        return self._answer(name, model, revision)

    def room(self) -> dict:
        """Free the engine's memory for a stage's own model (a no-op without a GPU or sleep mode)."""
        if self.server is None or not self.server.alive() or self.asleep or not self.server.sleep:
            return {}
        started = time.monotonic()
        self.server.call(f"/sleep?level={self.sleep_level}", {})
        self.asleep = self.sleep_level
        self.weights_valid = self.sleep_level == 1
        self._say(f"engine: asleep (level {self.sleep_level}) while a stage uses the memory "
                  f"({time.monotonic() - started:.1f} s)")
        self._event("sleep", level=self.sleep_level, seconds=round(time.monotonic() - started, 2))
        return {}

    # -- the engine's life
    def _ensure_running(self, root: str, revision: str | None) -> None:
        if self.server is not None and self.server.alive():
            return
        if self.server is not None:  # it died under a stage
            code = self.server.process.returncode
            if self.restarts >= 1:
                raise UserError(f"engine: the warm vLLM server died again (exit {code}); its log: {self.server.log}; "
                                "run again to resume: finished stages and replies are kept")
            self.restarts += 1
            self.server.stop()
            self._say(f"[yellow]engine: the vLLM server died (exit {code}); restarting it once[/yellow]")
            self._event("died", exit=code)
            root, revision = self.server.model, self.server.revision
        self._start(root, revision)

    def _start(self, root: str, revision: str | None) -> None:
        sleep = {"on": True, "off": False}.get(self.settings["sleep"], _has_gpu())
        self.server = EngineServer(root, revision, self.vllm, self.settings["args"], self.lora_rank, sleep,
                                   self.folder / "server.log", f"{self.project}/{self.token}")
        self._say(f"engine: starting vLLM on {_short(root, self.project)}"
                  + (f" (LoRA up to rank {self.lora_rank})" if self.lora_rank else "") + "...")
        started = time.monotonic()
        self.server.start(self.settings["start_timeout"])
        seconds = time.monotonic() - started
        self.root, self.adapter, self.asleep, self.weights_valid = root, None, 0, True
        self._say(f"engine: ready in {seconds:.0f} s ({self.server.url})")
        self._event("start", model=root, seconds=round(seconds, 2), pid=self.server.process.pid)

    def _wake(self) -> None:
        started = time.monotonic()
        self.server.call("/wake_up", {})
        self.asleep = 0
        # vLLM's LoRA state after a sleep is not to be trusted (vllm#20161, vllm#19596): load it again.
        self.adapter = None
        self._event("wake", seconds=round(time.monotonic() - started, 2))

    def _reload(self, root: str) -> str | None:
        """Put root's whole weights in the server in place; why not, when it cannot hold them."""
        if root != self.server.model and not same_architecture(root, self.server.model):
            return (f"{_short(root, self.project)} is not the architecture the engine holds "
                    f"({_short(self.server.model, self.project)}); whole weights reload in place only onto their "
                    "own kind")
        started = time.monotonic()
        self.server.call("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": root}})
        self.server.call("/reset_prefix_cache", {})
        self.root, self.adapter, self.weights_valid = root, None, True  # reloading drops vLLM's LoRA state
        seconds = time.monotonic() - started
        self._say(f"engine: weights of {_short(root, self.project)} reloaded in {seconds:.1f} s")
        self._event("reload", model=root, seconds=round(seconds, 2))
        return None

    def _load_adapter(self, model: str, revision: str | None, adapters: list[str], root: str) -> str:
        from selfimprove.models import model_identity
        from selfimprove.models.lora_stack import Unstackable, stack, stacked_rank

        name = "lora-" + _digest(model_identity(model, revision))
        if name == self.adapter:
            return name
        rank = stacked_rank(adapters)
        if rank > self.lora_rank:
            raise Unstackable(f"the chain of {len(adapters)} adapters under {_short(model, self.project)} has rank "
                              f"{rank}, over the engine's {self.lora_rank} (warm_engine.max_lora_rank)")
        started = time.monotonic()
        path = stack(adapters, root, self.folder / "adapters" / name)
        if self.adapter:
            self.server.call("/v1/unload_lora_adapter", {"lora_name": self.adapter})
        self.adapter = None
        self.server.call("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        self.server.call("/reset_prefix_cache", {})
        self.adapter = name
        seconds = time.monotonic() - started
        self._say(f"engine: LoRA {_short(model, self.project)} (rank {rank}, {len(adapters)} adapter(s) stacked) "
                  f"loaded in {seconds:.1f} s")
        self._event("load_adapter", model=model, name=name, rank=rank, seconds=round(seconds, 2))
        return name

    def _answer(self, name: str, model: str, revision: str | None) -> dict:
        from selfimprove.models import model_identity

        return {"url": self.server.url + "/v1", "model": name, "concurrency": self.settings["concurrency"],
                "key": _digest([model_identity(model, revision), self.server.model])}

    def _fallback(self, reason: str) -> dict:
        if reason not in self.said:
            self.said.add(reason)
            self._say(f"[yellow]engine: {reason}; such a stage starts its own engine[/yellow]")
            self._event("fallback", reason=reason)
        self.room()
        return {"fallback": reason}

    def _say(self, text: str) -> None:
        try:
            self.console.print(text, highlight=False)
        except OSError:  # the terminal is gone (SIGHUP): the events file still says it
            pass

    def _event(self, event: str, **fields) -> None:
        with open(self.folder / "events.jsonl", "a") as events:
            events.write(json.dumps({"time": round(time.time(), 3), "event": event, **fields}) + "\n")


@contextmanager
def for_run(loop, project: Path, console):
    """The environment the run's `dvc repro` gets: the warm engine's address with `engine: warm`, else
    none (and the engine of a run that ended is stopped when the block ends, however it ends)."""
    if loop.engine != "warm":
        yield {}
        return
    rank, lora_only = loop_lora_rank(loop, project)
    with Broker(project, loop.name, loop.backend_settings, loop.engine_settings, rank, lora_only, console) as broker:
        yield broker.env()


def loop_lora_rank(loop, project: Path) -> tuple[int, bool]:
    """(the rank of the largest LoRA chain the run will serve, whether every model it trains is a LoRA
    adapter): the ranks of the adapters its stages write, in every iteration, over the chain the run
    starts from (--from an adapter)."""
    from selfimprove.core.registry import resolve
    from selfimprove.models.lora_stack import chain, stacked_rank

    rank, lora_only = 0, True
    for k in range(1, loop.iterations + 1):
        for name in loop.pipelines.get(k, []):
            stage = resolve("stage", name)
            if "model" in stage.writes:
                written = stage.lora_rank(loop.per_iteration[k])
                rank, lora_only = rank + written, lora_only and written > 0
    if loop.start_from:
        run, k = loop.start_from.split("@")
        rank += stacked_rank(chain(str(project / "runs" / run / f"it{k}" / "model"), project)[2])
    return rank, lora_only


def same_architecture(one: str, other: str) -> bool:
    """Whether two local whole models have the same architecture, shapes and tokenizer (so one's weights
    load into an engine built for the other)."""
    def signature(directory: str):
        path = Path(directory)
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return None
        tokenizer = path / "tokenizer.json"
        return ({k: v for k, v in config.items() if k not in CONFIG_NOISE},
                hashlib.sha256(tokenizer.read_bytes()).hexdigest() if tokenizer.is_file() else None)

    mine = signature(one)
    return mine is not None and mine == signature(other)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _short(path: str, project: Path) -> str:
    try:
        return str(Path(path).relative_to(project))
    except ValueError:
        return str(path)


def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _handler(broker: Broker):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                body = {}
            reply, status = self._answer(body)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _answer(self, body: dict) -> tuple[dict, int]:
            token, _, action = self.path.strip("/").partition("/")
            if token != broker.token or body.get("project") != str(broker.project):
                return {"error": f"this engine serves the run {broker.run} of {broker.project} only"}, 403
            try:
                if action == "acquire":
                    return broker.acquire(body["model"], body.get("revision")), 200
                if action == "room":
                    return broker.room(), 200
                return {"error": f"no such request: {action}"}, 404
            except UserError as error:
                return {"error": str(error)}, 500
            except Exception as error:  # the stage reports it; the run's engine must keep serving
                broker._event("broker_error", error=repr(error))
                return {"error": f"engine: {type(error).__name__}: {error}"}, 500

        def log_message(self, *args):  # no access log on the run's terminal
            pass

    return Handler
