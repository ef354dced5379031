"""The loop file: its YAML, its checks, its stop rules."""
