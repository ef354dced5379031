"""selfimprove: iterative self-improvement loops as cached, resumable DVC pipelines."""

__version__ = "0.1.0"
