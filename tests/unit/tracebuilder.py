"""Build probe traces by hand for the model's unit tests: each test states the
kernel's behaviour from the specification, then breaks it."""

from __future__ import annotations

from typing import Optional

from harness.events import Callback, Event, Record, Subscriber
from harness.model.expect import judge
from harness.model.ops import Op
from harness.model.versions import Features

PID = 100
A = 0x7E0000000000          # where mmops puts its first mapping
K = 1024
M = 1024 * K


class TraceBuilder:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.now = 1000

    def tick(self) -> int:
        self.now += 10
        return self.now

    def add(self, callback: Callback, start: int = 0, end: int = 0, event: Optional[Event] = None,
            blockable: bool = True, pid: int = PID, subscriber: Subscriber = Subscriber.PRIMARY,
            ret: int = 0) -> "TraceBuilder":
        failed = ret < 0 or (callback == Callback.INTERVAL_INVALIDATE and ret == 0)
        self.records.append(Record(seq=len(self.records) + 1, time_ns=self.tick(), start=start, end=end,
                                   callback=callback, event=event, blockable=blockable, ret=ret, failed=failed,
                                   cpu=0, pid=pid, subscriber=subscriber))
        return self

    def start(self, event: Event, start: int, end: int, **kw) -> "TraceBuilder":
        return self.add(Callback.START, start, end, event, **kw)

    def end(self, event: Event, start: int, end: int, **kw) -> "TraceBuilder":
        return self.add(Callback.END, start, end, event, **kw)

    def window(self, event: Event, start: int, end: int, ir: bool = False, pte: Optional[int] = None,
               **kw) -> "TraceBuilder":
        """start, [invalidate_range], [change_pte], end; `ir` adds 6.1's invalidate_range before the end."""
        self.start(event, start, end, **kw)
        if ir:
            self.add(Callback.INVALIDATE_RANGE, start, end, pid=kw.get("pid", PID))
        if pte is not None:
            self.add(Callback.CHANGE_PTE, pte, 0, pid=kw.get("pid", PID))
        return self.end(event, start, end, **kw)

    def ir(self, start: int, end: int, pid: int = PID) -> "TraceBuilder":
        return self.add(Callback.INVALIDATE_RANGE, start, end, pid=pid)

    def release(self, pid: int = PID) -> "TraceBuilder":
        return self.add(Callback.RELEASE, pid=pid)

    def op(self, kind: str, t0: int, **kw) -> Op:
        """An operation spanning from t0 to now."""
        return Op(kind=kind, t0=t0, t1=self.tick(), **kw)

    def mapping(self, size: int, thp: bool = False, name: str = "A", start: int = A) -> Op:
        """mmops's map operation: `size` bytes at `start`, touched, THP-backed when `thp`."""
        return self.op("map", self.tick(), name=name, start=start, end=start + size, thp=thp,
                       anon_huge_kb=(size // (2 * M)) * 2048 if thp else 0)

    def rules(self, ops: list[Op], f: Features) -> list[str]:
        """The model's findings' rules on this trace for `ops`, with the workload's exit and release."""
        ops = ops + [self.op("exit", self.tick())]
        self.release()
        return [x.rule for x in judge(self.records, ops, PID, f).findings]
