"""Fake vllm.distributed.parallel_state: no GPU and no process group here, so teardown has nothing to do
beyond what the backend itself must do (drop every reference to the LLM, which the tests check)."""

import gc


def destroy_model_parallel() -> None:
    pass


def destroy_distributed_environment() -> None:
    pass


def cleanup_dist_env_and_memory() -> None:
    destroy_model_parallel()
    destroy_distributed_environment()
    gc.collect()
