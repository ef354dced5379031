"""Fake vllm.distributed: the teardown calls the vLLM backend makes to free GPU memory."""

from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

__all__ = ["destroy_distributed_environment", "destroy_model_parallel"]
