"""Typed events: the probe's records, and KVM's tracepoints as ftrace prints them.

The record layout is stated once, here, as the field table below; a unit test
compiles guest/include/nh_probe.h and checks every size, offset and enum value
against it.  The harness also compares the loaded module's record_size and
abi_version with these before reading a single record.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Optional

from harness.guest_data import PID_MAX, GuestDataError, parse_int

ABI_VERSION = 2

# (field, struct code): struct nh_record, in order.
RECORD_FIELDS: tuple[tuple[str, str], ...] = (
    ("seq", "Q"), ("time_ns", "Q"), ("start", "Q"), ("end", "Q"),
    ("callback", "I"), ("event", "I"), ("flags", "I"), ("ret", "i"),
    ("cpu", "I"), ("pid", "I"), ("subscriber", "I"), ("sub_id", "I"),
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
    # The get/put subscription's lifetime, and the module's own calls (docs/get-put.md).
    ALLOC_NOTIFIER = 11
    FREE_NOTIFIER = 12
    GET = 13             # after mmu_notifier_get returned: ret, and users after it in `end`
    PUT = 14             # before mmu_notifier_put: users before it in `end`
    SYNCHRONIZE = 15     # after mmu_notifier_synchronize returned


# What the probe's get/put mode records besides callbacks.
GETPUT_CALLS = frozenset({Callback.ALLOC_NOTIFIER, Callback.FREE_NOTIFIER, Callback.GET, Callback.PUT,
                          Callback.SYNCHRONIZE})


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
    GETPUT = 5     # a subscription taken with mmu_notifier_get; Record.sub_id says which


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
    sub_id: int = 0      # the get/put subscription's id (Subscriber.GETPUT), else 0

    @property
    def users(self) -> int:
        """GET: the subscription's users count after the get; PUT: before the put."""
        return self.end

    def describe(self) -> str:
        name = self.callback.name.lower()
        if self.callback in (Callback.GET, Callback.PUT):
            what = f"{name} #{self.sub_id} users {self.users}" if self.sub_id else name
            what += f" FAILED {self.ret}" if self.ret else ""
        elif self.callback in GETPUT_CALLS:
            what = f"{name} #{self.sub_id}" if self.sub_id else name
        elif self.callback in (Callback.START, Callback.END, Callback.INTERVAL_INVALIDATE):
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
        if self.subscriber == Subscriber.GETPUT:
            who = "" if self.callback in GETPUT_CALLS else f" [getput #{self.sub_id}]"
        return f"#{self.seq} {what} pid {self.pid}{who}"


def parse_records(data: bytes, source: str = "probe event stream") -> list[Record]:
    """The probe's raw records.  Every field is a fixed-size integer, so only the length and the
    enum values can be wrong."""
    if len(data) % RECORD_SIZE:
        raise GuestDataError(source, f"{len(data)} bytes, not a multiple of the {RECORD_SIZE}-byte record: "
                                     f"module and harness disagree on the layout")
    records = []
    for fields in RECORD.iter_unpack(data):
        raw = dict(zip((name for name, _ in RECORD_FIELDS), fields))
        try:
            callback = Callback(raw["callback"])
            subscriber = Subscriber(raw["subscriber"])
            event = Event(raw["event"]) if raw["event"] else None
        except ValueError as e:
            raise GuestDataError(source, f"record #{raw['seq']} is malformed ({e}): layout mismatch?") from None
        # Only the get/put subscriptions are numbered, and their calls only by them.
        if (raw["sub_id"] != 0 and subscriber != Subscriber.GETPUT) or \
                (callback in GETPUT_CALLS and subscriber != Subscriber.GETPUT):
            raise GuestDataError(source, f"record #{raw['seq']} is malformed ({callback.name.lower()} from "
                                         f"subscriber {subscriber.name.lower()} with id {raw['sub_id']}): "
                                         f"layout mismatch?")
        records.append(Record(seq=raw["seq"], time_ns=raw["time_ns"], start=raw["start"], end=raw["end"],
                              callback=callback, event=event, blockable=bool(raw["flags"] & REC_BLOCKABLE),
                              failed=bool(raw["flags"] & REC_FAILED), ret=raw["ret"], cpu=raw["cpu"],
                              pid=raw["pid"], subscriber=subscriber, sub_id=raw["sub_id"]))
    return records


# --- ftrace: KVM's mmu notifier tracepoints (kernel-semantics.md §4) -------

KVM_EVENTS = ("kvm_unmap_hva_range", "kvm_age_hva", "kvm_test_age_hva", "kvm_set_spte_hva")

_LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+(?:\S+\s+)?"
                   r"(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s*(?P<msg>.*)$", re.ASCII)
_HEX = re.compile(r"0x[0-9a-fA-F]+")
# The ring's note that it overwrote events; the per-CPU overrun counts report the loss.
_LOST = re.compile(r"CPU:\d+ \[LOST \d+ EVENTS\]", re.ASCII)
MAX_CPUS = 8192


@dataclass(frozen=True)
class TraceEvent:
    pid: int
    comm: str
    cpu: int
    time_s: float
    name: str
    start: int       # the range start, or the single address
    end: int         # exclusive range end; 0 for single-address events

    def describe(self) -> str:
        where = f"[{self.start:#x}, {self.end:#x})" if self.end else f"{self.start:#x}" if self.start else ""
        return f"{self.time_s:.6f} {self.comm}-{self.pid} cpu{self.cpu} {self.name} {where}".rstrip()


def parse_trace(text: str, source: str = "ftrace trace") -> list[TraceEvent]:
    """The `trace` file's events.  Its header and markers (`#`), blank lines and lost-event notes
    are skipped; any other line is an error, since an event the parser missed would look to the
    cross-check like a call KVM never saw."""
    events = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or _LOST.fullmatch(line.strip()):
            continue
        m = _LINE.match(line)
        if not m:
            raise GuestDataError(source, "not a trace event line", line)
        events.append(_trace_event(m, source))
    return events


def _trace_event(m: re.Match[str], source: str) -> TraceEvent:
    name = m["event"]
    numbers = [parse_int(x, source, base=16) for x in _HEX.findall(m["msg"])] if name in KVM_EVENTS else []
    start = numbers[0] if numbers else 0
    end = numbers[1] if len(numbers) > 1 and name in ("kvm_unmap_hva_range", "kvm_age_hva") else 0
    return TraceEvent(pid=parse_int(m["pid"], source, lo=0, hi=PID_MAX), comm=m["comm"].strip(),
                      cpu=parse_int(m["cpu"], source, lo=0, hi=MAX_CPUS), time_s=float(m["ts"]), name=name,
                      start=start, end=end)


def parse_overruns(stats: str, source: str = "ftrace per-CPU stats") -> int:
    """Events lost to a full ring buffer, summed over the per-CPU `stats` files (one `overrun:` line
    each; none at all means the files were not read)."""
    counts = [parse_int(line.partition(":")[2], source, lo=0)
              for line in stats.splitlines() if line.startswith("overrun:")]
    if not counts:
        raise GuestDataError(source, "no 'overrun:' line", stats)
    return sum(counts)
