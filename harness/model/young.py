"""Young bits: every primary young-bit clear on a watched mm reaches the secondary MMUs (docs/young.md).

On x86 the primary MMU's accessed bit is cleared by four out-of-line functions
(arch/x86/mm/pgtable.c): ptep_test_and_clear_young, pmdp_test_and_clear_young,
ptep_clear_flush_young and pmdp_clear_flush_young (the last two call the first two).  Where the
kernel means the secondary MMUs to age with it, it calls them through the notify wrappers of
include/linux/mmu_notifier.h, which call the secondary callback for the same address right
after, in the same call:

    ptep_clear_flush_young_notify   ptep_clear_flush_young     then clear_flush_young(addr, addr + 4 KiB)
    pmdp_clear_flush_young_notify   pmdp_clear_flush_young     then clear_flush_young(addr, addr + 2 MiB)
    ptep_clear_young_notify         ptep_test_and_clear_young  then clear_young(addr, addr + 4 KiB)
    pmdp_clear_young_notify         pmdp_test_and_clear_young  then clear_young(addr, addr + 2 MiB)

(6.1 and 6.12; the wrappers call the secondary whether or not the primary bit was set, and only
for an mm with notifiers, mm_has_notifiers()).  Both run under the page table lock, so the pair is
two consecutive calls of one task on one CPU.  The harness sees both halves with kprobes in one
ftrace buffer (harness/scenarios/youngtrace.py): the primary function (with the mm from
vma->vm_mm, the address, the entry before the call and the calling function) and the notifier
core's entry point (__mmu_notifier_clear_young and its siblings, with the mm and the range).

The rule: on an mm with notifiers, every primary clear is followed, as the same task's next call
on that CPU, by the secondary callback the wrapper makes, with the same mm and exactly the range
above; otherwise a young bit was cleared behind the secondary MMUs' back -- unless the kernel does
that by design, which ALLOWED names with the reason, read from the source:

  * /proc/PID/clear_refs 1, 2 and 3 (clear_refs_pte_range): resets the CPU's referenced bits for a
    working-set estimate; no notifier call in 6.1 or 6.12.
  * MADV_COLD (madvise_cold_or_pageout_pte_range; clear_young_dirty_ptes inlined into it on
    6.12): makes the range old for the kernel's own LRU, no notifier call in 6.1 or 6.12.
  * MGLRU on 6.1 (lru_gen_look_around, walk_pte_range, walk_pmd_range_locked and the walk
    functions they are inlined into): ages with the bare primitives; 6.12 uses the notify
    wrappers (Features.mglru_clear_young).
  * the accessed bit of a PMD that points to a PTE table (MGLRU's walk_pmd_range_locked clears it
    as a hint, 6.1 and 6.12): a page-table entry, not a page any
    secondary MMU maps.  Told from a huge PMD by the entry's PSE bit.

ptep_clear_flush_young's own call of ptep_test_and_clear_young (when not inlined) is part of the
outer clear, not a second one.  test_young is never paired: it clears nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

from harness.events import Callback, Record, Subscriber
from harness.model.callsites import frame_name
from harness.model.findings import Finding
from harness.model.versions import Features

PAGE = 4096
HPAGE = 2 << 20

# The primary functions: the size of the range their wrapper passes, and the secondary callback.
PRIMARIES: Mapping[str, tuple[int, str]] = {
    "ptep_test_and_clear_young": (PAGE, "clear_young"),
    "pmdp_test_and_clear_young": (HPAGE, "clear_young"),
    "ptep_clear_flush_young": (PAGE, "clear_flush_young"),
    "pmdp_clear_flush_young": (HPAGE, "clear_flush_young"),
}
SECONDARIES = ("clear_young", "clear_flush_young", "test_young")
RELEASE = "release"
# ptep_clear_flush_young / pmdp_clear_flush_young call the test-and-clear primitive themselves.
_OUTER = {"ptep_test_and_clear_young": "ptep_clear_flush_young",
          "pmdp_test_and_clear_young": "pmdp_clear_flush_young"}
# x86 page-table entry bits.
_PRESENT = 1 << 0
_ACCESSED = 1 << 5
_PSE = 1 << 7
WINDOW = 3     # hits shown on each side of a finding


@dataclass(frozen=True)
class Hit:
    """One call the ftrace probes saw: a primary young-bit function, a notifier entry point (a
    secondary callback about to be delivered), or an mm's release."""

    index: int                  # position in the trace (per CPU, the buffer's own order)
    pid: int
    cpu: int
    time_s: float
    what: str                   # a PRIMARIES function, a SECONDARIES callback, or RELEASE
    mm: int
    start: int = 0              # the address (primaries, test_young) or the range's start
    end: int = 0                # the range's end (clear_young, clear_flush_young)
    entry: Optional[int] = None  # primaries: the PTE or PMD before the call, when it could be read
    caller: str = ""            # primaries: the calling function, as the kprobe printed it
    comm: str = ""

    @property
    def primary(self) -> bool:
        return self.what in PRIMARIES

    @property
    def caller_name(self) -> str:
        return frame_name(self.caller) if self.caller else ""

    @property
    def young(self) -> Optional[bool]:
        """Whether the entry had its accessed bit set before the call (None: not read)."""
        return None if self.entry is None else bool(self.entry & _ACCESSED)

    def describe(self) -> str:
        who = f"{self.comm or '?'}-{self.pid} cpu{self.cpu} {self.time_s:.6f}"
        if self.primary:
            young = {None: "", True: " young", False: " old"}[self.young]
            by = f" from {self.caller_name}" if self.caller else ""
            return f"{who} {self.what} {self.start:#x}{young}{by} mm {self.mm:#x}"
        if self.what == "test_young" or self.what == RELEASE:
            at = f" {self.start:#x}" if self.what == "test_young" else ""
            return f"{who} {self.what}{at} mm {self.mm:#x}"
        return f"{who} {self.what} [{self.start:#x}, {self.end:#x}) mm {self.mm:#x}"


@dataclass(frozen=True)
class Allowance:
    """Primary clears the kernel makes without telling the secondary MMUs, on purpose."""

    name: str
    callers: frozenset[str]
    why: str
    applies: Callable[[Features], bool] = lambda f: True


_MGLRU_WALK = frozenset({"lru_gen_look_around", "walk_pte_range", "walk_pmd_range_locked", "walk_pmd_range",
                         "walk_pud_range"})

ALLOWED: tuple[Allowance, ...] = (
    Allowance("clear_refs", frozenset({"clear_refs_pte_range"}),
              "/proc/PID/clear_refs 1-3 resets the CPU's referenced bits for a working-set estimate "
              "(clear_refs_pte_range calls ptep/pmdp_test_and_clear_young with no notifier)"),
    Allowance("madv_cold", frozenset({"madvise_cold_or_pageout_pte_range", "clear_young_dirty_ptes"}),
              "MADV_COLD makes the range old for the kernel's own LRU only (madvise_cold_or_pageout_pte_range, "
              "no notifier)"),
    Allowance("mglru_61", _MGLRU_WALK,
              "MGLRU ages with ptep/pmdp_test_and_clear_young and no notifier on this version "
              "(lru_gen_look_around, walk_pte_range, walk_pmd_range_locked); 6.12 uses ptep_clear_young_notify",
              lambda f: not f.mglru_clear_young),
)
NOT_A_LEAF = ("the accessed bit of a PMD that points to a PTE table (MGLRU's walk_pmd_range_locked hint): "
              "a page-table entry, not a page a secondary MMU maps")


def allowance(hit: Hit, f: Features) -> Optional[str]:
    """Why the kernel clears this primary young bit without a secondary callback, or None."""
    if hit.what.startswith("pmdp_") and hit.entry is not None and \
            (hit.entry & (_PRESENT | _PSE)) == _PRESENT:
        return NOT_A_LEAF
    caller = hit.caller_name
    for a in ALLOWED:
        if caller in a.callers and a.applies(f):
            return a.why
    return None


def mm_of(hits: Iterable[Hit], pid: int) -> Optional[int]:
    """The mm a task released on exit (its own mm, when it was the last user), if the trace saw it."""
    return next((h.mm for h in hits if h.what == RELEASE and h.pid == pid), None)


def watched_mms(hits: Iterable[Hit]) -> set[int]:
    """The mms with notifiers: the notifier core is entered (a secondary callback, release) only
    for those."""
    return {h.mm for h in hits if not h.primary}


@dataclass
class YoungJudgement:
    findings: list[Finding]
    paired: Counter[str] = field(default_factory=Counter)          # caller -> primary clears paired
    allowed: Counter[str] = field(default_factory=Counter)         # reason -> primary clears allowed
    unwatched: int = 0                                              # primaries on mms without notifiers
    mms: set[int] = field(default_factory=set)

    def summary(self) -> str:
        paired = sum(self.paired.values())
        by = ", ".join(f"{n} {c or '?'}" for c, n in self.paired.most_common())
        allowed = sum(self.allowed.values())
        return (f"{paired} primary young-bit clears paired with their secondary callback ({by or 'none'}), "
                f"{allowed} allowed without one, {self.unwatched} on mms without notifiers")


def _window(hits: Sequence[Hit], at: int) -> tuple[str, ...]:
    lo, hi = max(0, at - WINDOW), min(len(hits), at + WINDOW + 1)
    return tuple(("> " if i == at else "  ") + hits[i].describe() for i in range(lo, hi))


def judge_young(hits: Sequence[Hit], f: Features, *, mms: Optional[set[int]] = None,
                pids: Optional[set[int]] = None, since: float = 0.0, until: float = float("inf")) -> YoungJudgement:
    """The pairing rule over a trace in its order.  `mms`: the mms to judge (default: every mm the
    notifier core was entered for).  `pids`: only the clears of these tasks (default: all).
    `since`, `until` (CLOCK_MONOTONIC seconds): only the clears in that time, which the caller knows
    the mm had its notifiers (an mm gets them when the probe attaches, after exec)."""
    watched = watched_mms(hits) if mms is None else mms
    out = YoungJudgement(findings=[], mms=set(watched))
    released: dict[int, float] = {}
    for h in hits:
        if h.what == RELEASE:
            released.setdefault(h.mm, h.time_s)
    # Per CPU, the positions of its hits in trace order: a wrapper's two calls are adjacent there.
    per_cpu: dict[int, list[int]] = {}
    for i, h in enumerate(hits):
        per_cpu.setdefault(h.cpu, []).append(i)
    for positions in per_cpu.values():
        for k, i in enumerate(positions):
            h = hits[i]
            if not h.primary or (pids is not None and h.pid not in pids) or not since <= h.time_s <= until:
                continue
            if h.caller_name == _OUTER.get(h.what):
                continue            # ptep_clear_flush_young's own test-and-clear: its hit stands for both
            if h.mm not in watched or h.time_s > released.get(h.mm, float("inf")):
                out.unwatched += 1  # no notifiers on that mm (or no longer): the wrapper skips the secondary
                continue
            why = allowance(h, f)
            if why is not None:
                out.allowed[why] += 1
                continue
            nxt = _next_call(hits, positions[k + 1:], h)
            problem = _pair_problem(h, nxt)
            if problem is None:
                out.paired[h.caller_name] += 1
                continue
            out.findings.append(Finding(
                rule="young-pairing", op=f"{h.what} from {h.caller_name or '?'}",
                message=f"young bit of {h.start:#x} cleared behind the secondary MMUs' back: {problem}",
                expected=_expected(h), observed=nxt.describe() if nxt else "nothing after it from that task",
                window=_window(hits, i)))
    return out


def _next_call(hits: Sequence[Hit], later: Sequence[int], h: Hit) -> Optional[Hit]:
    """The same task's next call on the same CPU, the flush primitive's inner call skipped."""
    for j in later:
        n = hits[j]
        if n.pid != h.pid:
            continue
        if n.primary and n.caller_name == _OUTER.get(n.what) and n.start == h.start:
            continue
        return n
    return None


def _expected(h: Hit) -> str:
    size, callback = PRIMARIES[h.what]
    return f"{callback} [{h.start:#x}, {h.start + size:#x}) on mm {h.mm:#x} right after, from the same task"


def _pair_problem(h: Hit, n: Optional[Hit]) -> Optional[str]:
    size, callback = PRIMARIES[h.what]
    if n is None:
        return f"no {callback} followed"
    if n.what != callback:
        return f"the task's next call was {n.what}, not {callback}"
    if n.mm != h.mm:
        return f"the {callback} that followed was for mm {n.mm:#x}"
    if (n.start, n.end) != (h.start, h.start + size):
        return f"the {callback} that followed covers [{n.start:#x}, {n.end:#x})"
    return None


_CALLBACK = {"clear_young": Callback.CLEAR_YOUNG, "clear_flush_young": Callback.CLEAR_FLUSH_YOUNG,
             "test_young": Callback.TEST_YOUNG}


def _key(pid: int, callback: Callback, start: int, end: int) -> tuple[int, str, int, int]:
    return pid, callback.name.lower(), start, end if callback != Callback.TEST_YOUNG else 0


def check_probe_saw(hits: Sequence[Hit], records: Sequence[Record], mm: int, pid_of: str = "") -> list[Finding]:
    """The secondary callbacks the notifier core was entered with for `mm` are the ones the probe
    (a subscriber of that mm) recorded: the same task, callback and range, as many times."""
    core = Counter(_key(h.pid, _CALLBACK[h.what], h.start, h.end) for h in hits
                   if h.what in _CALLBACK and h.mm == mm)
    probe = Counter(_key(r.pid, r.callback, r.start, r.end) for r in records
                    if r.callback in _CALLBACK.values() and r.subscriber == Subscriber.PRIMARY)
    findings = []
    for what, counts, other in (("entered the notifier core but never reached the probe", core, probe),
                                ("reached the probe but the notifier core's entry was not seen", probe, core)):
        extra = counts - other
        if extra:
            (pid, callback, start, end), n = next(iter(sorted(extra.items())))
            total = sum(extra.values())
            rng = f"{start:#x}" if callback == "test_young" else f"[{start:#x}, {end:#x})"
            findings.append(Finding(rule="young-probe", op=pid_of,
                                    message=f"{total} young callbacks {what}, first {callback} {rng} from pid "
                                            f"{pid} (x{n})",
                                    expected="every young callback of the workload's mm in both accounts",
                                    observed=f"{sum(core.values())} at the notifier core, {sum(probe.values())} "
                                             f"recorded by the probe"))
    return findings
