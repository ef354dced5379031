"""Servers a sampling stage starts on its own model and stops when it is done (openai.serve).

A server started before the run cannot serve a policy that changes every iteration, unless something
makes it follow the policy (the run's warm engine does, for backend vllm: selfimprove.pipeline.engine_broker).
Here each stage that samples runs the user's launch command once per endpoint, with {model} (the stage's model, the
name its requests ask for) and {port}, waits until the server answers GET <endpoint>/models, sends its
requests through the cached client and stops the servers (the whole process tree) when it closes, on
an error too. An endpoint URL holding {port} gets a free port of this machine; a URL with a fixed port
is for a launcher that starts the server elsewhere (ssh, srun, ...), e.g.

    openai:
      serve: "python -m vllm.entrypoints.openai.api_server --model {model} --port {port} --seed 0"
      endpoints: ["http://127.0.0.1:{port}/v1", "http://127.0.0.1:{port}/v1"]   # two local servers
"""

from __future__ import annotations

import atexit
import shlex
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from selfimprove.core.errors import UserError

POLL_SECONDS = 1.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Servers:
    def __init__(self, command: str, endpoints: list[str], model: str, log_dir: Path, timeout: float):
        self.command, self.model, self.log_dir, self.timeout = command, model, Path(log_dir), timeout
        self.urls = [url.replace("{port}", str(free_port())) if "{port}" in url else url for url in endpoints]
        self.processes: list[subprocess.Popen] = []

    def start(self) -> list[str]:
        """Launch every server, then wait for all of them; return their base URLs."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        for rank, url in enumerate(self.urls):
            port = urlparse(url).port or (443 if url.startswith("https") else 80)
            command = self.command.replace("{model}", shlex.quote(self.model)).replace("{port}", str(port))
            log = open(self.log_dir / f"server-{rank}.log", "w")
            self.processes.append(subprocess.Popen(command, shell=True, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + self.timeout
        for rank, url in enumerate(self.urls):
            self._wait(rank, url, deadline)
        return self.urls

    def _wait(self, rank: int, url: str, deadline: float) -> None:
        while True:
            code = self.processes[rank].poll()
            if code is not None:
                self.stop()
                raise UserError(f"openai.serve: the server for {url} exited with status {code} before answering; "
                                f"its output: {self._tail(rank)}")
            try:
                with urllib.request.urlopen(url.rstrip("/") + "/models", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise UserError(f"openai.serve: no answer from {url}/models within {self.timeout:.0f} s; raise "
                                f"openai.serve_timeout, or see the server's output: {self._tail(rank)}")
            time.sleep(POLL_SECONDS)

    def _tail(self, rank: int) -> str:
        path = self.log_dir / f"server-{rank}.log"
        lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return " | ".join(lines[-3:]) or f"nothing ({path})"

    def stop(self) -> None:
        """Stop every server and whatever it started (vLLM's engine core), then forget them."""
        import psutil

        atexit.unregister(self.stop)
        for process in self.processes:
            try:
                tree = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for member in tree:
                try:
                    member.terminate()
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(tree, timeout=30)
            for member in alive:
                member.kill()
            process.wait()
        self.processes = []
