"""One module per stage. Each has a core function of (settings, inputs) -> outputs that tests import,
and a thin `main()` that DVC runs as `python -m selfimprove.stages.<name> ...`."""
