"""Two observers of one notifier chain must agree: the probe's records and KVM's tracepoints.

KVM's notifier and the probe's are subscriptions on the same mm, so every
callback the mm's chain makes reaches both (kernel-semantics.md §4):

- invalidate_range_start  -> `kvm_unmap_hva_range(start, end)`, unconditionally, first thing;
- clear_flush_young, clear_young -> `kvm_age_hva(start, end)`;
- test_young(addr)        -> `kvm_test_age_hva(addr)` (the probe answers "not young", and the
                             chain stops only at a young answer, so KVM, registered first and
                             called after the probe, is always reached);
- change_pte(addr)        -> `kvm_set_spte_hva(addr)`, on kernels that have change_pte (6.1).

Callbacks of one task happen in one order for both observers, so the
comparison is per task: the probe's sequence of a task must appear in KVM's
sequence of that task as one contiguous run.  KVM's tracing starts before the
probe attaches and stops after it detaches, so KVM may have seen more at either
end, never in the middle.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence

from harness.events import Callback, Record, TraceEvent
from harness.model.versions import Features

CALL_OF_CALLBACK = {
    Callback.START: "unmap",
    Callback.CLEAR_FLUSH_YOUNG: "age",
    Callback.CLEAR_YOUNG: "age",
    Callback.TEST_YOUNG: "test_age",
    Callback.CHANGE_PTE: "set_spte",
}
CALL_OF_EVENT = {
    "kvm_unmap_hva_range": "unmap",
    "kvm_age_hva": "age",
    "kvm_test_age_hva": "test_age",
    "kvm_set_spte_hva": "set_spte",
}


@dataclass(frozen=True)
class Call:
    kind: str
    start: int
    end: int = 0     # 0: a single address

    def overlaps(self, lo: int, hi: int) -> bool:
        return self.start < hi and (self.end if self.end else self.start + 1) > lo

    def __str__(self) -> str:
        return f"{self.kind} [{self.start:#x}, {self.end:#x})" if self.end else f"{self.kind} {self.start:#x}"


@dataclass(frozen=True)
class CrossCheck:
    findings: tuple[str, ...]
    matched: dict[str, int]          # calls both observers saw, by kind
    in_slot: dict[str, int]          # of those, calls overlapping the slot's host range
    edge_only: int                   # KVM-only calls before the probe attached or after it detached


def probe_calls(records: Sequence[Record]) -> dict[int, list[Call]]:
    calls: dict[int, list[Call]] = defaultdict(list)
    for r in records:
        kind = CALL_OF_CALLBACK.get(r.callback)
        if kind:
            single = r.callback in (Callback.TEST_YOUNG, Callback.CHANGE_PTE)
            calls[r.pid].append(Call(kind, r.start, 0 if single else r.end))
    return calls


def trace_calls(events: Sequence[TraceEvent]) -> dict[int, list[Call]]:
    calls: dict[int, list[Call]] = defaultdict(list)
    for e in events:
        kind = CALL_OF_EVENT.get(e.name)
        if kind:
            calls[e.pid].append(Call(kind, e.start, e.end))
    return calls


def _find_run(needle: list[Call], haystack: list[Call]) -> Optional[int]:
    """Where `needle` starts in `haystack` as a contiguous run; None if it does not."""
    if not needle:
        return 0
    for i in range(len(haystack) - len(needle) + 1):
        if haystack[i] == needle[0] and haystack[i:i + len(needle)] == needle:
            return i
    return None


def _divergence(probe: list[Call], kvm: list[Call]) -> str:
    """The first call where the two accounts part, aligned at the probe's first call."""
    offset = next((i for i, c in enumerate(kvm) if probe and c == probe[0]), 0)
    for i, call in enumerate(probe):
        theirs = kvm[offset + i] if offset + i < len(kvm) else None
        if theirs != call:
            return (f"call {i + 1} of {len(probe)}: the probe saw {call}, KVM traced "
                    f"{theirs if theirs else 'nothing more'}")
    return f"KVM traced {len(kvm) - offset - len(probe)} more calls in the middle"


def cross_check(records: Sequence[Record], events: Sequence[TraceEvent], features: Features,
                slot: tuple[int, int]) -> CrossCheck:
    findings: list[str] = []
    probe, kvm = probe_calls(records), trace_calls(events)
    matched: dict[str, int] = defaultdict(int)
    in_slot: dict[str, int] = defaultdict(int)
    edge_only = 0
    if not features.kvm_set_spte_hva:
        spte = [e for e in events if e.name == "kvm_set_spte_hva"]
        if spte:
            findings.append(f"KVM traced kvm_set_spte_hva {len(spte)} times on {features.label}, which has no "
                            f"change_pte (first: {spte[0].describe()})")
    for pid in sorted(set(probe) | set(kvm)):
        mine, theirs = probe.get(pid, []), kvm.get(pid, [])
        at = _find_run(mine, theirs)
        if at is None:
            findings.append(f"task {pid}: the probe's {len(mine)} callbacks are not KVM's {len(theirs)} "
                            f"tracepoints in order: {_divergence(mine, theirs)}")
            continue
        edge_only += len(theirs) - len(mine)
        for call in mine:
            matched[call.kind] += 1
            if call.overlaps(*slot):
                in_slot[call.kind] += 1
    return CrossCheck(tuple(findings), dict(matched), dict(in_slot), edge_only)
