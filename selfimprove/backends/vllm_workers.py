"""Data parallelism for the vLLM backend: one long-lived worker process per model copy.

Each worker is started with `spawn` (a forked CUDA context is unusable), sees only its own GPUs through
CUDA_VISIBLE_DEVICES set before vLLM is imported there, loads the model once, and then serves calls
until the backend closes: a stage calls sample() once per shard, and reloading the model per call would
cost more than the sampling. A call cuts its items into contiguous chunks, hands the next chunk to the
first idle worker, and concatenates the results in order.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os

from selfimprove.core.errors import UserError

CHUNKS_PER_WORKER = 4  # more chunks balance better; each costs a round trip and a smaller vLLM batch


def contiguous_slices(items: list, parts: int) -> list[list]:
    """items cut into `parts` contiguous slices whose sizes differ by at most one (earlier ones larger)."""
    size, extra = divmod(len(items), parts)
    slices, start = [], 0
    for rank in range(parts):
        end = start + size + (rank < extra)
        slices.append(items[start:end])
        start = end
    return slices


def device_groups(visible: list[str], copies: int, per_copy: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each model copy: consecutive groups of per_copy of the visible GPUs."""
    if len(visible) < copies * per_copy:
        raise UserError(f"vllm.data_parallel_size: {copies} copies x tensor_parallel_size {per_copy} need "
                        f"{copies * per_copy} GPUs, {len(visible)} visible ({','.join(visible)}); lower "
                        "vllm.data_parallel_size")
    return [",".join(visible[rank * per_copy:(rank + 1) * per_copy]) for rank in range(copies)]


def visible_devices(count: int) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (all `count` when unset)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [d.strip() for d in listed.split(",") if d.strip()] if listed else [str(i) for i in range(count)]


class WorkerPool:
    def __init__(self, backend_class, model_ref: str, revision: str | None, settings: dict, chat_template: bool):
        # backend_class: what each worker runs (VLLMBackend, passed in: the backend imports this module)
        copies, per_copy = settings["data_parallel_size"], settings["tensor_parallel_size"]
        context = multiprocessing.get_context("spawn")
        single = {**settings, "data_parallel_size": 1}
        self.pipes, self.processes = [], []
        ports = port_ranges(copies)
        for devices, port in zip(device_groups(visible_devices(copies * per_copy), copies, per_copy), ports):
            parent, child = context.Pipe()
            # Not a daemon: vLLM starts its own processes for tensor parallelism, which daemons may not.
            process = context.Process(target=_serve, args=(child, backend_class, devices, port, model_ref, revision,
                                                           single, chat_template))
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)
        # An exception that escapes the stage must not hang it: at exit, multiprocessing joins these
        # (non-daemon) workers while they wait for a call. atexit runs last-registered first, so this
        # close (registered after multiprocessing's own handler) tells them to stop before that join.
        atexit.register(self.close)

    def run(self, method: str, items: list, options: dict) -> list:
        """method(chunk, **options) on the workers, the results concatenated in item order. The items go
        out in CHUNKS_PER_WORKER contiguous chunks per worker, the next chunk to whichever worker is idle
        first, so a slower copy (longer completions, a busier GPU) takes fewer of them."""
        from multiprocessing.connection import wait

        chunks = [c for c in contiguous_slices(items, len(self.pipes) * CHUNKS_PER_WORKER) if c] or [[]]
        pending, results, busy = list(enumerate(chunks)), [None] * len(chunks), {}
        for rank, pipe in enumerate(self.pipes):
            if pending:
                self._send(rank, pipe, pending.pop(0), method, options, busy)
        while busy:
            for pipe in wait(list(busy)):
                rank, index = busy.pop(pipe)
                results[index] = self._receive(rank, pipe)
                if pending:
                    self._send(rank, pipe, pending.pop(0), method, options, busy)
        return [value for part in results for value in part]

    @staticmethod
    def _send(rank: int, pipe, chunk: tuple[int, list], method: str, options: dict, busy: dict) -> None:
        index, part = chunk
        pipe.send((method, part, options))
        busy[pipe] = (rank, index)

    @staticmethod
    def _receive(rank: int, pipe) -> list:
        try:
            status, value = pipe.recv()
        except EOFError:
            raise UserError(f"vllm: data-parallel worker {rank} died (see its output above; out of GPU "
                            "memory? lower vllm.gpu_memory_utilization)") from None
        if status == "error":
            raise UserError(f"vllm: data-parallel worker {rank}: {value}")
        return value

    def close(self) -> None:
        atexit.unregister(self.close)
        for pipe in self.pipes:
            try:
                pipe.send(None)
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=60)
            if process.is_alive():
                process.terminate()
                process.join()
        self.pipes, self.processes = [], []


def port_ranges(copies: int, spacing: int = 64) -> list[int]:
    """The first port of each worker's own range (VLLM_PORT): engines started at the same moment pick
    their internal ports from disjoint ranges instead of racing for the same free one (vllm#14919)."""
    from selfimprove.backends.serve import free_port

    base = int(os.environ.get("VLLM_PORT") or min(free_port(), 65535 - spacing * copies))
    return [base + spacing * rank for rank in range(copies)]


def _serve(pipe, backend_class, devices: str, port: int, model_ref: str, revision: str | None, settings: dict,
           chat_template: bool) -> None:
    """A worker's life: restrict it to its GPUs and its ports, then answer calls until told to stop
    (None) or the parent goes away (the pipe closes)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    os.environ["VLLM_PORT"] = str(port)
    backend = backend_class(model_ref, revision, settings, chat_template)
    methods = {"sample": backend.sample_requests, "choice_probs": backend.choice_probs_here}
    try:
        while True:
            try:
                call = pipe.recv()
            except EOFError:
                break
            if call is None:
                break
            method, part, options = call
            try:
                pipe.send(("ok", methods[method](part, **options) if part else []))
            except Exception as error:  # reported by the parent as one line, with the worker's rank
                pipe.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        backend.close()
