"""What the operation families share: registering an operation, a family's own part of the address
space, and an expectation that is a sequence of windows plus rules on what the workload reported.

This module registers nothing itself; the package imports it like any family module, and the
families import it.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from harness.events import Record
from harness.model.contract import Pair
from harness.model.expect import ExpectFn, Expectation, Want, _match, register_expectation
from harness.model.findings import Finding
from harness.model.ops import AddressSpace, Op, register_op
from harness.model.versions import Features

T = TypeVar("T")


def register(kind: str, expect: ExpectFn, ints: tuple[str, ...] = (), ranged: bool = True) -> None:
    """Declare a family's operation to the parser (its integer fields; whether it names a range)
    and give it its expectation."""
    register_op(kind, ints=ints, ranged=ranged)
    register_expectation(kind, expect)


def family_state(aspace: AddressSpace, key: str, make: Callable[[], T]) -> T:
    """A family's own state in the address space the operations walk (its file mappings, its lazily
    freed pages, ...), made by `make` on first use and kept under `key` (the family's name)."""
    if key not in aspace.families:
        aspace.families[key] = make()
    return aspace.families[key]  # type: ignore[no-any-return]


def windows_then(op: Op, wants: Sequence[Want], f: Features,
                 reported: Callable[[Sequence[Record]], list[Finding]]) -> Expectation:
    """An operation whose windows must be exactly `wants`, in order, and whose report is judged by
    `reported` (given the whole trace, for the findings' evidence)."""
    def check(pairs: list[Pair], _own: list[Record], records: Sequence[Record]) -> list[Finding]:
        return _match(pairs, wants, (), op.describe(), records, f) + reported(records)

    return Expectation(op, check=check)
