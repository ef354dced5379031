"""From a loop to DVC and back: the compiler, code fingerprints, the runner, DVC plumbing."""
