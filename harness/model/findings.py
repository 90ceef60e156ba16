"""A finding: one broken rule, with what was expected, what was seen, and the
records around the disagreement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from harness.events import Record

WINDOW = 4  # records shown on each side of the disagreement


@dataclass(frozen=True)
class Finding:
    rule: str                       # e.g. "pairing", "munmap-unmap"
    message: str                    # one line: what is wrong
    op: str = ""                    # the operation, e.g. "munmap [0x7e0000100000, 0x7e0000101000)"
    expected: str = ""
    observed: str = ""
    window: tuple[str, ...] = field(default=())

    def line(self) -> str:
        where = f" in {self.op}" if self.op else ""
        return f"[{self.rule}]{where}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "message": self.message, "op": self.op, "expected": self.expected,
                "observed": self.observed, "window": list(self.window)}


def window_around(records: Sequence[Record], seq: int) -> tuple[str, ...]:
    """The records within WINDOW of sequence number `seq`, the one itself marked."""
    index = next((i for i, r in enumerate(records) if r.seq >= seq), len(records))
    lo, hi = max(0, index - WINDOW), min(len(records), index + WINDOW + 1)
    return tuple(("> " if r.seq == seq else "  ") + r.describe() for r in records[lo:hi])
