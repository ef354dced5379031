"""A user's preference-pair file: a JSONL of prompt, chosen, rejected (RewardBench's shape), as LIFT, BSM and
the judge evaluation read it, and as `validate` reads it first (the same function, on a bounded prefix).
Each line is checked: a problem is one line naming the file, the line and the field.

    pairs = read_pairs("prefs.jsonl", setting="lift.pairs_file")
"""

from __future__ import annotations

from selfimprove.core import jsonl
from selfimprove.core.errors import UserError

PAIR_FIELDS = ("prompt", "chosen", "rejected")
PAIR_EXAMPLE = '{"prompt": "2+3=", "chosen": "5", "rejected": "6"}'
VALIDATE_ROWS = 2000  # pairs validate reads of a file; the stage reads them all


def read_pairs(path: str, size: int = 0, setting: str = "pairs_file") -> list[dict]:
    """A JSONL of prompt, chosen, rejected (RewardBench's shape), each line checked: a problem is one
    line naming the file, the line and the field. size > 0 reads the first size pairs (validate reads a
    bounded prefix this way)."""
    pairs = []
    for number, row in jsonl.records(path, setting, PAIR_EXAMPLE, limit=size or None):
        for field in PAIR_FIELDS:
            jsonl.text_field(row, field, path, number, PAIR_FIELDS)
        if row["chosen"] == row["rejected"]:
            raise UserError(f"{path}:{number}: chosen and rejected are the same text; a pair teaches nothing "
                            "without a difference: drop the line or fix one side")
        pairs.append(row)
    return pairs


def check_pairs_file(value: str, reads, where: str) -> None:
    """validate: the pairs file read as its stage reads it, on a bounded prefix."""
    read_pairs(value, VALIDATE_ROWS, where)
