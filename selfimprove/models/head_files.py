"""What a temperature head's directory is (Adaptive Decoding): its config file, the language model it
reads, and how to tell a head from any other model reference. Separate from the head's network and
decoding (selfimprove.models.temperature_head) because every model loader asks "is this a head?": loops
without a head then carry none of the head's code in their fingerprints."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

CONFIG = "temperature_head.json"
WEIGHTS = "temperature_head.safetensors"
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
LEVELS = ("sequence", "token")


@dataclass(frozen=True)
class HeadConfig:
    temperatures: tuple[float, ...]
    level: str
    hidden_size: int  # the language model's hidden size: the head's input
    width: int
    layers: int
    base_model: str
    revision: str | None = None

    def to_json(self) -> dict:
        return {"temperatures": list(self.temperatures), "level": self.level, "hidden_size": self.hidden_size,
                "width": self.width, "layers": self.layers, "base_model": self.base_model, "revision": self.revision}


def parse_temperatures(text: str) -> tuple[float, ...]:
    """"0.0,0.2,0.4" -> (0.0, 0.2, 0.4); raises ValueError on a bad entry, a negative one or a repeat."""
    values = tuple(float(part) for part in text.split(",") if part.strip())
    if len(values) < 2 or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise ValueError(text)
    return values


def is_head(reference: str | Path) -> bool:
    """Whether a model reference is a directory holding a temperature head."""
    return (Path(reference) / CONFIG).is_file()


def read_config(directory: str | Path) -> HeadConfig:
    raw = json.loads((Path(directory) / CONFIG).read_text())
    return HeadConfig(tuple(raw["temperatures"]), raw["level"], raw["hidden_size"], raw["width"], raw["layers"],
                      raw["base_model"], raw.get("revision"))


def base_model(reference: str) -> tuple[str, str | None] | None:
    """(the language model a head directory reads, its revision), or None when reference is no head."""
    if not is_head(reference):
        return None
    config = read_config(reference)
    base = config.base_model
    if base in (".", "..") or base.startswith(("./", "../")):  # relative to the head (an export's `..`)
        base = os.path.normpath(os.path.join(str(reference), base))
    return base, config.revision
