"""Loaded by every Python process of a test that puts this folder on PYTHONPATH (tests/test_stage_failures.py):
when $SELFIMPROVE_FAULT names a stage module (selfimprove.stages.vote), that module run as `python -m`,
as DVC runs it, raises RuntimeError at the start of its main, where it parses its arguments (the first
thing every stage's main does). Every other process, dvc's included, runs as usual."""

import os

_TARGET = os.environ.get("SELFIMPROVE_FAULT")

if _TARGET:
    import argparse
    import sys

    _parse_args = argparse.ArgumentParser.parse_args

    def _faulty_parse_args(self, *args, **kwargs):
        running = getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None)
        if running == _TARGET:
            raise RuntimeError(f"injected fault in {_TARGET}")
        return _parse_args(self, *args, **kwargs)

    argparse.ArgumentParser.parse_args = _faulty_parse_args
