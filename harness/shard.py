"""Splitting a run's (kernel, scenario) slots across machines, and what a shard is.

Pure.  The slots are taken in the run's order (kernel by kernel, each kernel's
scenarios in config order) and cut into N contiguous parts of about equal
weight: a kernel's slots stay together (one boot serves them) unless a cut
falls inside them, which costs that kernel one more boot.  The weight of a slot
is its duration in an earlier run's results.json when one is given, else 1:
the same inputs give the same split on every machine of a CI matrix.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

from harness.errors import ConfigError

Slot = tuple[int, str]      # (the kernel's index in the config, the scenario's directory name)


@dataclass(frozen=True)
class Shard:
    index: int              # 1-based, as written: --shard 1/2
    count: int

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


_SHARD = re.compile(r"^(\d{1,4})/(\d{1,4})$")


def parse_shard(text: str) -> Shard:
    m = _SHARD.match(text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 1/2")
    return Shard(int(m.group(1)), int(m.group(2)))


def split(slots: Sequence[Slot], shard: Shard, durations: Mapping[Slot, float] | None = None) -> list[Slot]:
    """The slots of `shard`, in run order."""
    known = [d for d in (durations or {}).values() if d > 0]
    # A slot the earlier run did not have weighs what a typical one did.
    default = statistics.median(known) if known else 1.0
    weights = [max((durations or {}).get(s, default), 1e-3) for s in slots]
    total = sum(weights)
    chosen, before = [], 0.0
    for slot, weight in zip(slots, weights):
        # The slot belongs to the part its middle falls in.
        part = min(int((before + weight / 2) / total * shard.count), shard.count - 1)
        if part == shard.index - 1:
            chosen.append(slot)
        before += weight
    return chosen
