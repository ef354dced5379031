"""The warm engine's process: one vLLM OpenAI-compatible server on this machine, started on a model,
spoken to over HTTP, stopped with everything it started.

The server runs with runtime LoRA loading (VLLM_ALLOW_RUNTIME_LORA_UPDATING: /v1/load_lora_adapter) and
vLLM's development endpoints (VLLM_SERVER_DEV_MODE: /reset_prefix_cache, /sleep, /wake_up and
/collective_rpc, which reloads whole weights in place). It binds 127.0.0.1 only: those endpoints
must not be reachable from other machines.

Nothing may outlive the run: the server is in the run's process group (a Ctrl-C or a kill of the group
reaches it), gets SIGTERM from the kernel when the runner dies (PR_SET_PDEATHSIG: a SIGKILL of
selfimprove alone), and carries a marker in its environment that its children (vLLM's engine core and
workers) inherit, so stop() finds them even after the server itself was killed and they were orphaned
(measured on vLLM 0.32's CPU build: a SIGKILL of the server leaves EngineCore and its worker running).
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from selfimprove.backends.serve import free_port
from selfimprove.core.errors import UserError

MARKER = "SELFIMPROVE_ENGINE_OF"  # in the server's environment: "<project>/<token>"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
PR_SET_PDEATHSIG = 1
STOP_GRACE = 30.0  # seconds a stopping server gets to stop its engine core before it is killed


def lora_slot_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds an adapter of this rank (0 when too big)."""
    return next((allowed for allowed in LORA_RANKS if allowed >= rank), 0)


class EngineServer:
    def __init__(self, model: str, revision: str | None, vllm: dict, args: str, lora_rank: int, sleep: bool,
                 log: Path, marker: str):
        self.model, self.revision, self.vllm, self.args = model, revision, vllm, args
        self.lora_rank, self.sleep, self.log, self.marker = lora_rank, sleep, Path(log), marker
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        vllm = self.vllm
        words = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                 "--host", "127.0.0.1", "--port", str(self.port), "--seed", "0",  # requests carry their own seeds
                 "--gpu-memory-utilization", str(vllm["gpu_memory_utilization"]),
                 "--tensor-parallel-size", str(vllm["tensor_parallel_size"])]
        if vllm.get("data_parallel_size", 1) > 1:  # the server runs the copies itself and spreads requests
            words += ["--data-parallel-size", str(vllm["data_parallel_size"])]
        if self.revision:
            words += ["--revision", self.revision]
        if vllm.get("max_model_len"):
            words += ["--max-model-len", str(vllm["max_model_len"])]
        if vllm.get("dtype", "auto") != "auto":
            words += ["--dtype", vllm["dtype"]]
        if self.lora_rank:
            words += ["--enable-lora", "--max-lora-rank", str(self.lora_rank), "--max-loras", "1"]
        if self.sleep:
            words += ["--enable-sleep-mode"]
        return words + shlex.split(self.args)

    def start(self, timeout: float) -> None:
        """Start the server and wait until it answers GET /v1/models."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="1", VLLM_SERVER_DEV_MODE="1",
                   **{MARKER: self.marker})
        if self.vllm.get("batch_invariant"):
            env["VLLM_BATCH_INVARIANT"] = "1"
        with open(self.log, "a") as log:
            log.write(f"$ {shlex.join(self.command())}\n")
            log.flush()
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise UserError(f"engine: the vLLM server exited with status {self.process.returncode} before "
                                f"answering; its output: {self.tail()} (full log: {self.log})")
            if time.monotonic() > deadline:
                self.stop()
                raise UserError(f"engine: the vLLM server did not answer within {timeout:.0f} s; raise "
                                f"warm_engine.start_timeout, or see its log: {self.log}")
            time.sleep(0.5)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v1/models", timeout=5) as reply:
                return reply.status == 200
        except OSError:
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def call(self, path: str, body: dict | None = None, timeout: float = 600.0) -> object:
        """POST path (GET without a body) and return the reply's JSON (or text); an error reply raises
        UserError with the server's message."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                text = reply.read().decode()
        except urllib.error.HTTPError as error:
            raise UserError(f"engine: {path} answered HTTP {error.code}: {error.read().decode()[:300]}") from None
        try:
            return json.loads(text) if text else None
        except ValueError:
            return text

    def tail(self, lines: int = 3) -> str:
        try:
            kept = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "nothing"
        return " | ".join(kept[-lines:]) or "nothing"

    def stop(self) -> None:
        """Stop the server and every process carrying its marker (its engine core and workers, orphaned or
        not): SIGTERM, STOP_GRACE seconds, then SIGKILL."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
        stop_marked(self.marker, STOP_GRACE)
        if self.process is not None:
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def marked(marker: str) -> list:
    """The processes of this user whose environment holds MARKER=marker (MARKER=marker* when the marker
    ends with /: every engine of a project)."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            value = process.environ().get(MARKER)
        except (psutil.Error, OSError):
            continue
        if value and (value == marker or (marker.endswith("/") and value.startswith(marker))):
            found.append(process)
    return found


def stop_marked(marker: str, grace: float) -> int:
    """Terminate the marked processes, kill those alive after `grace` seconds; how many there were."""
    import psutil

    processes = [p for p in marked(marker) if p.pid != os.getpid()]
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    return len(processes)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that started it (the broker's) goes, so a
    SIGKILL of the runner stops the server too (Linux; elsewhere the group and the marker do it)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
