"""Typed events from the probe's records.

The record layout is stated once, here, as the field table below; a unit test
compiles guest/include/nh_probe.h and checks every size, offset and enum value
against it.  The harness also compares the loaded module's record_size and
abi_version with these before reading a single record.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Optional

from harness.errors import GuestError

ABI_VERSION = 1

# (field, struct code): struct nh_record, in order.
RECORD_FIELDS: tuple[tuple[str, str], ...] = (
    ("seq", "Q"), ("time_ns", "Q"), ("start", "Q"), ("end", "Q"),
    ("callback", "I"), ("event", "I"), ("flags", "I"), ("ret", "i"),
    ("cpu", "I"), ("pid", "I"), ("subscriber", "I"), ("reserved", "I"),
)
RECORD = struct.Struct("<" + "".join(code for _, code in RECORD_FIELDS))
RECORD_SIZE = RECORD.size


def record_offsets() -> dict[str, int]:
    offsets, at = {}, 0
    for name, code in RECORD_FIELDS:
        offsets[name] = at
        at += struct.calcsize("<" + code)
    return offsets


class Callback(IntEnum):
    START = 1
    END = 2
    INVALIDATE_RANGE = 3
    ARCH_INVALIDATE = 4
    CLEAR_FLUSH_YOUNG = 5
    CLEAR_YOUNG = 6
    TEST_YOUNG = 7
    CHANGE_PTE = 8
    RELEASE = 9
    INTERVAL_INVALIDATE = 10


class Event(IntEnum):
    """enum mmu_notifier_event + 1 (0 is "unset")."""

    UNMAP = 1
    CLEAR = 2
    PROTECTION_VMA = 3
    PROTECTION_PAGE = 4
    SOFT_DIRTY = 5
    RELEASE = 6
    MIGRATE = 7
    EXCLUSIVE = 8


class Subscriber(IntEnum):
    PRIMARY = 1
    INTERVAL = 2
    TLB = 3
    SECOND = 4     # the recording notifier beside a failing primary


REC_BLOCKABLE = 1 << 0
REC_FAILED = 1 << 1


@dataclass(frozen=True)
class Record:
    """One callback the probe saw."""

    seq: int
    time_ns: int
    start: int
    end: int
    callback: Callback
    event: Optional[Event]
    blockable: bool
    ret: int
    failed: bool         # the callback returned an error (start: -EAGAIN; interval: false)
    cpu: int
    pid: int
    subscriber: Subscriber

    def describe(self) -> str:
        name = self.callback.name.lower()
        if self.callback in (Callback.START, Callback.END, Callback.INTERVAL_INVALIDATE):
            ev = self.event.name if self.event else "?"
            what = f"{name} {ev} [{self.start:#x}, {self.end:#x})" + ("" if self.blockable else " NONBLOCK") \
                + (f" FAILED {self.ret}" if self.failed else "")
        elif self.callback in (Callback.TEST_YOUNG, Callback.CHANGE_PTE):
            what = f"{name} {self.start:#x}"
        elif self.callback == Callback.RELEASE:
            what = name
        else:
            what = f"{name} [{self.start:#x}, {self.end:#x})"
        who = "" if self.subscriber == Subscriber.PRIMARY else f" [{self.subscriber.name.lower()}]"
        return f"#{self.seq} {what} pid {self.pid}{who}"


def parse_records(data: bytes) -> list[Record]:
    if len(data) % RECORD_SIZE:
        raise GuestError(f"probe event stream is {len(data)} bytes, not a multiple of the "
                         f"{RECORD_SIZE}-byte record: module and harness disagree on the layout")
    records = []
    for fields in RECORD.iter_unpack(data):
        raw = dict(zip((name for name, _ in RECORD_FIELDS), fields))
        try:
            callback = Callback(raw["callback"])
            subscriber = Subscriber(raw["subscriber"])
            event = Event(raw["event"]) if raw["event"] else None
        except ValueError as e:
            raise GuestError(f"probe record #{raw['seq']} is malformed ({e}): layout mismatch?") from None
        records.append(Record(seq=raw["seq"], time_ns=raw["time_ns"], start=raw["start"], end=raw["end"],
                              callback=callback, event=event, blockable=bool(raw["flags"] & REC_BLOCKABLE),
                              failed=bool(raw["flags"] & REC_FAILED), ret=raw["ret"], cpu=raw["cpu"],
                              pid=raw["pid"], subscriber=subscriber))
    return records
