"""Rules every trace of one mm obeys, whatever the workload did.

From kernel-semantics.md §1-§3:
  pairing     every invalidate_range_start has its end, on the same task, properly
              nested (a task's windows form a stack; other tasks interleave freely)
  end-range   an end carries exactly its start's event, range and flags
  blockable   every range is blockable except the OOM reaper's
  change-pte  (<= 6.9) only inside an open start/end window covering the address;
              (>= 6.10) never
  invalidate-range
              (<= 6.5) inside an open window's range, or after the window the same
              task closed last.  The second case is not in the specification: in
              6.1 the mmu_gather flush after a zap or mprotect calls it once more
              after the end (tlb_flush_mmu_tlbonly() in include/asm-generic/tlb.h
              calls mmu_notifier_invalidate_range()), over the gather's range.
              After an UNMAP that range also covers the page tables free_pgtables()
              freed: pte_free_tlb()/pmd_free_tlb() widen it down to the table's
              2 MiB/1 GiB-aligned address (free_pgd_range() in mm/memory.c), so
              it may start below the window, never above its end;
              A third case, also not in the specification: MADV_COLD (and
              MADV_PAGEOUT) age PTEs under an mmu_gather with no window at all,
              so on 6.1 its flush calls invalidate_range bare, over the PTEs
              made old.  The caller names those operations (`bare_invalidate`);
              A fourth case: a gather that finishes while another of the mm is
              pending (mm_tlb_flush_nested, e.g. hugetlb_change_protection's own
              inside mprotect's) flushes as fullmm, whose range __tlb_reset_range()
              sets to start = end = ~0: invalidate_range [~0, ~0) after the window
              the same task closed last (tlb_finish_mmu() in mm/mmu_gather.c, 6.1);
              (>= 6.6) never
  arch-invalidate
              only on kernels that have arch_invalidate_secondary_tlbs (6.6+)
  release     at most once per notifier (exactly once when the task exited while
              watched), and no callback of that notifier after it
  failed-start
              a start may fail only when it may not block, and only with
              -EAGAIN (§2: the core WARNs otherwise); a failed start has no end
              of its own: the unwind ends the other notifiers' windows
  range       start < end, both page-aligned; except SOFT_DIRTY's [0, -1UL) (clear_refs_write's
              window over the whole address space)
  sequence    the module numbered every record it kept: no gaps
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

from harness.events import Callback, Event, Record, Subscriber
from harness.model.findings import Finding, window_around
from harness.model.versions import GIB, P4D_SIZE, Features

PAGE = 4096
# mmu_notifier_range_init(..., 0, -1UL): the whole address space, whose end is not page-aligned.
WHOLE_SPACE = (0, (1 << 64) - 1)
EAGAIN = 11
# A fullmm mmu_gather's range (__tlb_reset_range: start = end = ~0), flushed by a nested gather.
FULLMM_FLUSH = ((1 << 64) - 1, (1 << 64) - 1)
# The notifiers on the mm's hlist, judged here; interval and TLB notifiers are not.
HLIST = (Subscriber.PRIMARY, Subscriber.SECOND)


@dataclass
class Pair:
    """One start/end window of one task."""

    start: Record
    end: Optional[Record] = None
    parent: Optional["Pair"] = None
    children: list["Pair"] = field(default_factory=list)
    inner: list[Record] = field(default_factory=list)   # invalidate_range / change_pte seen while innermost

    @property
    def event(self) -> Optional[Event]:
        return self.start.event

    @property
    def range(self) -> tuple[int, int]:
        return self.start.start, self.start.end

    def describe(self) -> str:
        ev = self.event.name if self.event else "?"
        return f"{ev} [{self.start.start:#x}, {self.start.end:#x}) (#{self.start.seq}-" \
               f"{'#' + str(self.end.seq) if self.end else 'no end'})"


@dataclass
class Trace:
    records: list[Record]
    pairs: list[Pair]                 # every window, in start order
    findings: list[Finding]

    def top_level(self, records: Iterable[Record]) -> list[Pair]:
        """Outermost windows whose start is among `records`."""
        seqs = {r.seq for r in records}
        return [p for p in self.pairs if p.start.seq in seqs and (p.parent is None or p.parent.start.seq not in seqs)]


def _contains(outer: tuple[int, int], start: int, end: int) -> bool:
    return outer[0] <= start and end <= outer[1]


# What one 5-level P4D table maps (256 TiB): the widest flush a freed table can start.
P4D_5LEVEL_SPAN = 1 << 48


def _gather_range(pair: Pair, flush_start: int) -> tuple[int, int]:
    """What 6.1's mmu_gather may flush after this window closed (see the module docstring), for a flush
    that starts at `flush_start`."""
    start, end = pair.range
    if pair.event == Event.UNMAP:
        # A freed PTE table (2 MiB) or PMD table (1 GiB) below the range; a freed PUD table (512 GiB) or,
        # with 5-level paging (a tree's defconfig has it), a P4D table (256 TiB) flushes from its own
        # boundary, 512 GiB-aligned.
        top = P4D_5LEVEL_SPAN if flush_start % P4D_SIZE == 0 else GIB
        start &= ~(top - 1)
    return start, end


def _missing_callback(callback: Callback, f: Features) -> Optional[tuple[str, str]]:
    """(rule, message) for a callback this kernel version does not have."""
    if callback == Callback.CHANGE_PTE and not f.change_pte:
        return "change-pte", f"change_pte on {f.label}, which has no change_pte (removed in 6.10)"
    if callback == Callback.INVALIDATE_RANGE and not f.invalidate_range:
        return "invalidate-range", f"invalidate_range on {f.label}, which has none (6.6 renamed it)"
    if callback == Callback.ARCH_INVALIDATE and not f.arch_invalidate:
        return "arch-invalidate", f"arch_invalidate_secondary_tlbs on {f.label}, which predates it"
    return None


def check_contract(records: Sequence[Record], features: Features, *,
                   nonblocking_pids: frozenset[int] = frozenset(), expect_release: bool = False,
                   no_end: frozenset[Subscriber] = frozenset(),
                   bare_invalidate: Callable[[Record], bool] = lambda r: False) -> Trace:
    """`no_end`: notifiers registered without invalidate_range_end (a notifier that can fail
    must not have one, §2): their starts open no window and an end from them is wrong.
    `bare_invalidate`: which invalidate_range records an mmu_gather flush with no window made."""
    findings: list[Finding] = []
    pairs: list[Pair] = []
    # Windows nest per task and per notifier: (subscriber, pid) -> open windows.
    stacks: dict[tuple[Subscriber, int], list[Pair]] = {}
    last_closed: dict[tuple[Subscriber, int], Pair] = {}
    released: dict[Subscriber, Record] = {}

    def add(rule: str, message: str, rec: Record, expected: str = "", observed: str = "") -> None:
        findings.append(Finding(rule=rule, message=message, expected=expected, observed=observed or rec.describe(),
                                window=window_around(records, rec.seq)))

    def range_ok(rec: Record, what: str) -> None:
        if rec.event == Event.SOFT_DIRTY and (rec.start, rec.end) == WHOLE_SPACE:
            return   # clear_refs_write's window over the whole address space: [0, -1UL)
        if rec.start >= rec.end or rec.start % PAGE or rec.end % PAGE:
            add("range", f"{what} [{rec.start:#x}, {rec.end:#x}) is empty or not page-aligned", rec)

    previous_seq = 0
    for rec in records:
        if rec.seq != previous_seq + 1:
            add("sequence", f"records #{previous_seq + 1}..#{rec.seq - 1} are missing from the stream", rec,
                expected=f"#{previous_seq + 1}")
        previous_seq = rec.seq

        # What the kernel version has, whichever notifier the callback reached.
        missing = _missing_callback(rec.callback, features)
        if missing:
            add(missing[0], missing[1], rec)
            continue
        if rec.subscriber not in HLIST:
            continue  # interval and TLB notifiers are judged by the scenarios that ask for them
        key = (rec.subscriber, rec.pid)
        stack = stacks.setdefault(key, [])
        if rec.subscriber in released and rec.callback != Callback.RELEASE:
            add("release", f"{rec.callback.name.lower()} after release (#{released[rec.subscriber].seq}): the "
                           f"mm's notifiers were already unlinked", rec, expected="nothing after release")

        if rec.callback == Callback.RELEASE:
            if rec.subscriber in released:
                add("release", f"release called again (first #{released[rec.subscriber].seq})", rec,
                    expected="release exactly once")
            released[rec.subscriber] = rec
            for (sub, _pid), open_stack in stacks.items():
                if sub == rec.subscriber:
                    for open_pair in open_stack:
                        add("pairing", f"start #{open_pair.start.seq} {open_pair.describe()} still open at "
                                       f"release", open_pair.start)
                    open_stack.clear()
            continue
        if rec.callback in (Callback.CLEAR_FLUSH_YOUNG, Callback.CLEAR_YOUNG):
            range_ok(rec, rec.callback.name.lower())
            continue
        if rec.callback in (Callback.START, Callback.END):
            range_ok(rec, "range")
            if not rec.blockable and rec.pid not in nonblocking_pids:
                add("blockable", "non-blockable range outside the OOM reaper: every other caller uses "
                                 "mmu_notifier_invalidate_range_start(), which sets MMU_NOTIFIER_RANGE_BLOCKABLE", rec,
                    expected="blockable")
        if rec.callback == Callback.START and rec.failed:
            if rec.blockable or rec.ret != -EAGAIN:
                add("failed-start", f"start failed with {rec.ret} in {'' if rec.blockable else 'non-'}blockable "
                                    f"context: only a non-blockable start may fail, and only with -EAGAIN", rec)
            continue
        if rec.subscriber in no_end:
            # No windows of its own: nothing to pair or to place callbacks in.
            if rec.callback == Callback.END:
                add("pairing", f"end from the {rec.subscriber.name.lower()} notifier, which has no "
                               f"invalidate_range_end", rec)
            continue

        if rec.callback == Callback.START:
            pair = Pair(start=rec, parent=stack[-1] if stack else None)
            if pair.parent:
                pair.parent.children.append(pair)
            stack.append(pair)
            pairs.append(pair)
        elif rec.callback == Callback.END:
            def same(p: Pair) -> bool:
                return (p.start.start, p.start.end, p.start.event, p.start.blockable) == \
                       (rec.start, rec.end, rec.event, rec.blockable)
            if not stack:
                add("pairing", f"end {rec.event.name if rec.event else '?'} [{rec.start:#x}, {rec.end:#x}) "
                               f"without an open start on pid {rec.pid}", rec)
                continue
            depth = next((i for i in range(len(stack) - 1, -1, -1) if same(stack[i])), None)
            if depth is None:
                top = stack.pop()
                top.end = rec
                other_flags = "" if rec.blockable == top.start.blockable else " with other flags"
                add("end-range", f"end #{rec.seq} does not match its start #{top.start.seq}: start was "
                                 f"{top.describe()}, end is {rec.event.name if rec.event else '?'} "
                                 f"[{rec.start:#x}, {rec.end:#x}){other_flags}",
                    rec, expected=top.start.describe(), observed=rec.describe())
                last_closed[key] = top
                continue
            while len(stack) - 1 > depth:
                lost = stack.pop()
                add("pairing", f"start #{lost.start.seq} {lost.describe()} has no end: the end of an enclosing "
                               f"window (#{rec.seq}) came first", lost.start, expected=f"end for #{lost.start.seq}")
            closed = stack.pop()
            closed.end = rec
            last_closed[key] = closed
        elif rec.callback == Callback.CHANGE_PTE:
            if not any(p.range[0] <= rec.start < p.range[1] for p in stack):
                add("change-pte", f"change_pte {rec.start:#x} outside any open start/end window of pid {rec.pid}",
                    rec, expected="inside invalidate_range_start/end (set_pte_at_notify)")
            else:
                stack[-1].inner.append(rec)
        elif rec.callback == Callback.INVALIDATE_RANGE:
            if stack and any(_contains(p.range, rec.start, rec.end) for p in stack):
                stack[-1].inner.append(rec)
            elif key in last_closed and _contains(_gather_range(last_closed[key], rec.start), rec.start, rec.end):
                pass  # the mmu_gather flush after the window closed
            elif key in last_closed and (rec.start, rec.end) == FULLMM_FLUSH:
                pass  # a nested mmu_gather's fullmm flush after the window closed
            elif not stack and bare_invalidate(rec):
                pass  # the mmu_gather flush of an operation that opens no window
            else:
                add("invalidate-range", f"invalidate_range [{rec.start:#x}, {rec.end:#x}) is inside no open window "
                                        f"and not inside the window pid {rec.pid} closed last", rec)

    for open_stack in stacks.values():
        for open_pair in open_stack:
            add("pairing", f"start #{open_pair.start.seq} {open_pair.describe()} has no end", open_pair.start,
                expected=f"an end for #{open_pair.start.seq}")
    watched = sorted({r.subscriber for r in records if r.subscriber in HLIST}) if expect_release else []
    for sub in watched:
        if sub not in released:
            findings.append(Finding(rule="release", message=f"the task exited but the {sub.name.lower()} "
                                                            f"notifier's release was never called",
                                    expected="exactly one release at exit_mmap"))
    return Trace(records=list(records), pairs=pairs, findings=findings)
