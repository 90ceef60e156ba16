"""Per-operation expectations (kernel-semantics.md §3), and matching them to a trace.

For each operation the model derives, from the address space before it and
the kernel's features, the windows that must appear (Want), in order, and
the windows that may appear around them (Allow).  The trace's windows that
the workload's task opened during the operation are matched in order: a
missing Want, an unexpected window, or a wrong nesting or inner callback is
a finding that names the operation, what was expected and what was seen.

Beyond the specification, seen on 6.1 and 6.12 and explained by the source:
  * fork write-protects every private VMA that has an anon_vma: one
    PROTECTION_PAGE window per such VMA, exactly its range, in address order
    (copy_page_range() in mm/memory.c, for is_cow mappings).  The cow
    operation therefore expects one for each of the workload's VMAs, and
    allows one for any other private VMA of the process.
  * after fork the parent's own stack is shared too, so the parent's next
    stack write is a COW: 4 KiB CLEARs on other private VMAs are allowed
    during the cow operation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from harness.events import Callback, Event, Record, Subscriber
from harness.model.contract import Pair, Trace, check_contract
from harness.model.findings import Finding, window_around
from harness.model.ops import HPAGE, PAGE, AddressSpace, ModelError, Op, block
from harness.model.versions import Features


@dataclass(frozen=True)
class Want:
    """A window that must appear."""

    event: Event
    start: int
    end: int
    why: str
    nested: tuple["Want", ...] = ()
    change_pte: Optional[int] = None                      # (<= 6.9) change_pte at this address inside
    invalidate_range: Optional[tuple[int, int]] = None    # (<= 6.5) invalidate_range of this range inside

    def matches(self, pair: Pair) -> bool:
        return (pair.event, pair.range[0], pair.range[1]) == (self.event, self.start, self.end)

    def describe(self) -> str:
        return f"{self.event.name} [{self.start:#x}, {self.end:#x}) ({self.why})"


@dataclass(frozen=True)
class Allow:
    """Windows that may appear: an event and a test on the range."""

    event: Event
    why: str
    test: Callable[[int, int], bool]

    def matches(self, pair: Pair) -> bool:
        return pair.event == self.event and self.test(*pair.range)


@dataclass
class Expectation:
    op: Op
    wants: list[Want] = field(default_factory=list)
    allows: list[Allow] = field(default_factory=list)
    checked: bool = True       # False: the operation is outside the model (e.g. the bench loop)
    # AnonHugePages (kB) of the operation's mapping afterwards: PMD-mapped THP blocks only.
    anon_huge_kb: Optional[int] = None
    # Whose windows the operation causes: the workload's unless a kernel thread does the work (ksmd).
    pid: Optional[int] = None
    # Rules that are not a sequence of windows (KSM's per-page counts); given the windows, gives findings.
    check: Optional[Callable[[list[Pair], Sequence[Record]], list[Finding]]] = None


def _ir(f: Features, start: int, end: int) -> Optional[tuple[int, int]]:
    """6.1: a plain mmu_notifier_invalidate_range_end calls invalidate_range first."""
    return (start, end) if f.invalidate_range else None


def _split_want(b: tuple[int, int], why: str) -> Want:
    # __split_huge_pmd ends with _only_end on 6.1: no invalidate_range inside.
    return Want(Event.CLEAR, b[0], b[1], f"{why}: __split_huge_pmd")


def expect_dontneed(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    exp = Expectation(op)
    for vma in aspace.overlapping(op.start, op.end):
        s, e = max(op.start, vma.start), min(op.end, vma.end)
        nested = []
        for b0 in range(block(s)[0], e, HPAGE):
            blk = aspace.blocks.get(b0)
            if blk is None or not blk.pmd_mapped:
                continue
            if s <= b0 and b0 + HPAGE <= e:
                blk.pmd_mapped = blk.large_folio = blk.present = False   # zap_huge_pmd: whole block freed
                aspace.populated_pmds.discard(b0)
            else:
                nested.append(_split_want((b0, b0 + HPAGE), "partly covered PMD-mapped THP, zap_pmd_range"))
                blk.pmd_mapped = False
        exp.wants.append(Want(Event.CLEAR, s, e, "MADV_DONTNEED: CLEAR per VMA, zap_page_range_single",
                              nested=tuple(nested), invalidate_range=_ir(f, s, e)))
    return exp


def _protection_chunks(s: int, e: int, aspace: AddressSpace, f: Features) -> list[tuple[int, int]]:
    """PROTECTION_VMA ranges for [s, e): one per chunk with populated tables (§3 mprotect)."""
    out = []
    chunk = f.mprotect_chunk
    c = s
    while c < e:
        c_end = min(e, (c // chunk + 1) * chunk)
        first = None
        if f.mprotect_level == "pmd":
            # 6.1 change_pmd_range: from the first PMD that is not none
            for b0 in range(block(c)[0], c_end, HPAGE):
                if b0 in aspace.populated_pmds:
                    first = max(c, b0)
                    break
        else:
            # 6.12 change_pud_range: from the first PUD that is not none (a 1 GiB region with any table)
            gib = 1 << 30
            for g in range(c // gib * gib, c_end, gib):
                if any(g <= b0 < g + gib for b0 in aspace.populated_pmds):
                    first = max(c, g)
                    break
        if first is not None:
            out.append((first, c_end))
        c = c_end
    return out


def expect_mprotect(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    exp = Expectation(op)
    for vma in aspace.overlapping(op.start, op.end):
        if vma.prot == op.prot:
            continue   # mprotect_fixup: flags unchanged, nothing at all
        s, e = max(op.start, vma.start), min(op.end, vma.end)
        for at in (s, e):
            b = aspace.split_at(at) if vma.start < at < vma.end else None
            if b:
                exp.wants.append(_split_want(b, f"mprotect splits the VMA at {at:#x}"))
        for cs, ce in _protection_chunks(s, e, aspace, f):
            exp.wants.append(Want(Event.PROTECTION_VMA, cs, ce,
                                  f"mprotect: change_{f.mprotect_level}_range, one window per "
                                  f"{f.mprotect_chunk >> 30} GiB chunk", invalidate_range=_ir(f, cs, ce)))
    aspace.set_prot(op.start, op.end, op.prot)
    return exp


def expect_munmap(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    exp = Expectation(op)
    if not aspace.overlapping(op.start, op.end):
        return exp   # no VMA in the range: no event at all
    for at in (op.start, op.end):
        b = aspace.split_at(at)
        if b:
            exp.wants.append(_split_want(b, f"munmap splits the VMA at {at:#x}"))
    exp.wants.append(Want(Event.UNMAP, op.start, op.end, "munmap: UNMAP exactly the range, unmap_vmas",
                          invalidate_range=_ir(f, op.start, op.end)))
    aspace.remove(op.start, op.end)
    return exp


def expect_split(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """debugfs split_huge_pages: split_huge_page per large folio met in the range."""
    exp = Expectation(op)
    for b0 in sorted(aspace.blocks):
        blk = aspace.blocks[b0]
        if not (b0 < op.end and op.start < b0 + HPAGE) or not blk.large_folio or not blk.present:
            continue
        # unmap_folio -> try_to_migrate(TTU_SPLIT_HUGE_PMD): for every VMA the rmap walk visits
        for vma in aspace.overlapping(b0, b0 + HPAGE):
            s, e = max(b0, vma.start), min(b0 + HPAGE, vma.end)
            exp.wants.append(_split_want((b0, b0 + HPAGE), "split_huge_page: split_huge_pmd_address(freeze)"))
            exp.wants.append(Want(Event.CLEAR, s, e, "split_huge_page: try_to_migrate_one",
                                  invalidate_range=_ir(f, s, e)))
        blk.large_folio = blk.pmd_mapped = False
    return exp


def expect_cow(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    exp = Expectation(op)
    private = set(op.private_vmas)
    for vma in aspace.vmas:
        exp.wants.append(Want(Event.PROTECTION_PAGE, vma.start, vma.end,
                              "fork write-protects a private VMA with anon pages (copy_page_range)",
                              invalidate_range=_ir(f, vma.start, vma.end)))
    page = op.start
    blk = aspace.blocks.get(block(page)[0])
    if blk is not None and blk.pmd_mapped:
        exp.wants.append(_split_want(block(page), "write to a shared PMD-mapped THP (do_huge_pmd_wp_page)"))
        blk.pmd_mapped = False
    exp.wants.append(Want(Event.CLEAR, page, page + PAGE, "COW fault: wp_page_copy",
                          change_pte=page if f.change_pte else None, invalidate_range=_ir(f, page, page + PAGE)))
    exp.allows.append(Allow(Event.PROTECTION_PAGE, "fork write-protects the process's other private VMAs",
                            lambda s, e: (s, e) in private))
    exp.allows.append(Allow(Event.CLEAR, "the parent's COW of its own stack or data after fork",
                            lambda s, e: e - s == PAGE and not aspace.owns(s, e)
                            and any(ps <= s and e <= pe for ps, pe in private)))
    return exp


def _cow_want(page: int, f: Features, why: str) -> Want:
    return Want(Event.CLEAR, page, page + PAGE, why, change_pte=page if f.change_pte else None,
                invalidate_range=_ir(f, page, page + PAGE))


def _break_ksm(op: Op, aspace: AddressSpace, f: Features, why: str) -> Expectation:
    exp = Expectation(op)
    for page in sorted(p for p in aspace.ksm_pages if op.start <= p < op.end):
        exp.wants.append(_cow_want(page, f, why))
        aspace.ksm_pages.discard(page)
    return exp


def expect_write(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """fill and write: a page that maps a KSM page is copied on write; any other was written before."""
    return _break_ksm(op, aspace, f, "write to a KSM page: wp_page_copy")


def expect_unmerge(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """MADV_UNMERGEABLE: break_ksm faults every KSM page back to a private copy, in address order
    (6.1 with FAULT_FLAG_WRITE, 6.12 with FAULT_FLAG_UNSHARE: wp_page_copy either way)."""
    return _break_ksm(op, aspace, f, "MADV_UNMERGEABLE: break_ksm")


def expect_ksm(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """ksmd merging a region of identical pages (§3 KSM merge).

    Per merged page: write_protect_page's CLEAR, and replace_page's CLEAR on all
    but the first page of the first unstable pair (which becomes the KSM page).
    On 6.1 each window holds change_pte at its page (set_pte_at_notify) and the
    end's invalidate_range.  Which page pairs first depends on the scan, so the
    rule counts windows per page instead of fixing their order.
    """
    pages = list(range(op.start, op.end, PAGE))

    def check(pairs: list[Pair], records: Sequence[Record]) -> list[Finding]:
        findings: list[Finding] = []

        def add(message: str, seq: int = 0, expected: str = "") -> None:
            findings.append(Finding(rule="ksm", op=op.describe(), message=message, expected=expected,
                                    observed=f"{len(pairs)} windows from ksmd (pid {op.ksmd_pid})",
                                    window=window_around(records, seq) if seq else ()))

        if op.merging_pages != len(pages):
            add(f"{op.merging_pages} of {len(pages)} identical pages merged after full_scans went "
                f"{op.full_scans_before} -> {op.full_scans}", expected=f"ksm_merging_pages {len(pages)}")
        per_page: dict[int, int] = {}
        for pair in pairs:
            s, e = pair.range
            if pair.event != Event.CLEAR or e - s != PAGE or s not in pages:
                add(f"ksmd window {pair.describe()} is not a 4 KiB CLEAR on a page of the region", pair.start.seq)
                continue
            per_page[s] = per_page.get(s, 0) + 1
            findings.extend(_check_inner(pair, _cow_want(s, f, "KSM write_protect_page/replace_page"),
                                         op.describe(), records, f))
        untouched = [p for p in pages if p not in per_page]
        if untouched and op.merging_pages > 0:
            add(f"{len(untouched)} pages merged without a window, first {untouched[0]:#x}",
                expected="write_protect_page's CLEAR on every merged page")
        for page, count in per_page.items():
            if count > 2:
                add(f"page {page:#x} has {count} windows; write_protect_page and replace_page make two")
        singles = [p for p, c in per_page.items() if c == 1]
        if len(pages) > 1 and len(singles) > 1:
            add(f"{len(singles)} pages have only write_protect_page's window ({singles[0]:#x}, ...); only the "
                f"first page of the first unstable pair may", expected="replace_page's CLEAR on the others")
        return findings

    aspace.ksm_pages.update(pages)
    return Expectation(op, pid=op.ksmd_pid, check=check)


_EXPECT: dict[str, Callable[[Op, AddressSpace, Features], Expectation]] = {
    "dontneed": expect_dontneed, "mprotect": expect_mprotect, "munmap": expect_munmap,
    "split": expect_split, "cow": expect_cow, "fill": expect_write, "write": expect_write,
    "unmerge": expect_unmerge, "ksm": expect_ksm,
}


def expectations(ops: Sequence[Op], f: Features) -> list[Expectation]:
    """Walk the operations in order, each against the address space the previous left."""
    aspace = AddressSpace()
    regions: dict[str, tuple[int, int, bool]] = {}
    out = []
    for op in ops:
        if op.kind == "map":
            aspace.map(op)
            regions[op.name] = (op.start, op.end, op.thp)
            exp = Expectation(op)                    # first touches map pages: no callback
        elif op.kind in ("touch", "exit", "verify", "oom"):
            # faults, reading, the exit line (release is contract), an allocation until killed: none
            exp = Expectation(op)
        elif op.kind in _EXPECT:
            exp = _EXPECT[op.kind](op, aspace, f)
        elif op.kind == "loop":
            exp = Expectation(op, checked=False)
        else:
            raise ModelError(f"operation {op.kind!r} has no expectation in the model")
        if op.name in regions and regions[op.name][2]:
            start, end, _ = regions[op.name]
            exp.anon_huge_kb = sum(2048 for b0, blk in aspace.blocks.items()
                                   if start <= b0 < end and blk.pmd_mapped and blk.present)
        out.append(exp)
    return out


def _match(pairs: list[Pair], wants: Sequence[Want], allows: Sequence[Allow], where: str,
           records: Sequence[Record], f: Features) -> list[Finding]:
    findings: list[Finding] = []
    observed = "; ".join(p.describe() for p in pairs) or "nothing"

    def finding(rule: str, message: str, seq: int, expected: str = "") -> None:
        findings.append(Finding(rule=rule, message=message, op=where, expected=expected, observed=observed,
                                window=window_around(records, seq) if seq else ()))

    def extra(p: Pair) -> None:
        if not any(a.matches(p) for a in allows):
            finding("unexpected", f"unexpected window {p.describe()}", p.start.seq,
                    expected="; ".join(w.describe() for w in wants) or "no window")

    i = 0
    for want in wants:
        j = next((k for k in range(i, len(pairs)) if want.matches(pairs[k])), None)
        if j is None:
            near = pairs[i].start.seq if i < len(pairs) else (pairs[-1].start.seq if pairs else 0)
            finding("missing", f"missing {want.describe()}", near, expected=want.describe())
            continue
        for p in pairs[i:j]:
            extra(p)
        findings += _check_inner(pairs[j], want, where, records, f)
        i = j + 1
    for p in pairs[i:]:
        extra(p)
    return findings


def _check_inner(pair: Pair, want: Want, where: str, records: Sequence[Record], f: Features) -> list[Finding]:
    findings = _match(pair.children, want.nested, (), f"{where}, inside {pair.describe()}", records, f)
    ptes = [r for r in pair.inner if r.callback == Callback.CHANGE_PTE]
    if want.change_pte is not None and not any(r.start == want.change_pte for r in ptes):
        findings.append(Finding(rule="change-pte", op=where, message=f"no change_pte {want.change_pte:#x} inside "
                                f"{pair.describe()} ({want.why})", expected=f"change_pte {want.change_pte:#x}",
                                observed="; ".join(r.describe() for r in pair.inner) or "nothing inside",
                                window=window_around(records, pair.start.seq)))
    for r in ptes:
        if want.change_pte != r.start:
            findings.append(Finding(rule="change-pte", op=where, message=f"unexpected change_pte {r.start:#x} "
                                    f"inside {pair.describe()}", observed=r.describe(),
                                    window=window_around(records, r.seq)))
    if want.invalidate_range is not None:
        s, e = want.invalidate_range
        if not any(r.callback == Callback.INVALIDATE_RANGE and (r.start, r.end) == (s, e) for r in pair.inner):
            findings.append(Finding(rule="invalidate-range", op=where,
                                    message=f"no invalidate_range [{s:#x}, {e:#x}) before the end of "
                                            f"{pair.describe()} (mmu_notifier_invalidate_range_end calls it on "
                                            f"{f.label})", window=window_around(records, pair.start.seq)))
    return findings


@dataclass
class Judgement:
    trace: Trace
    findings: list[Finding]
    background: list[Record]      # other tasks' callbacks on this mm (khugepaged, kcompactd, ...)
    checked_ops: int


def judge(records: Sequence[Record], ops: Sequence[Op], pid: int, f: Features, *,
          nonblocking_pids: frozenset[int] = frozenset(), failing: bool = False) -> Judgement:
    """Contract rules over the whole trace, then each operation's expectations.

    `failing`: the primary notifier fails non-blockable starts and has no end; each
    operation's windows are then read from the recording notifier beside it.
    """
    exited = any(op.kind in ("exit", "oom") for op in ops)
    observer = Subscriber.SECOND if failing else Subscriber.PRIMARY
    trace = check_contract(records, f, nonblocking_pids=nonblocking_pids, expect_release=exited,
                           no_end=frozenset({Subscriber.PRIMARY}) if failing else frozenset())
    findings = list(trace.findings)
    checked = 0
    for exp in expectations(ops, f):
        if not exp.checked:
            continue
        checked += 1
        who = exp.pid or pid
        window = [r for r in records if exp.op.t0 <= r.time_ns <= exp.op.t1 and r.pid == who
                  and r.subscriber == observer]
        if exp.check is not None:
            findings += exp.check(trace.top_level(window), records)
        else:
            findings += _match(trace.top_level(window), exp.wants, exp.allows, exp.op.describe(), records, f)
        if exp.op.bad_pages:
            findings.append(Finding(rule="data", op=exp.op.describe(),
                                    message=f"{exp.op.bad_pages} pages do not hold what the workload wrote",
                                    expected="every page intact", observed=f"{exp.op.bad_pages} bad pages"))
        if exp.anon_huge_kb is not None and exp.op.anon_huge_kb >= 0 and exp.op.anon_huge_kb != exp.anon_huge_kb:
            findings.append(Finding(rule="thp-state", op=exp.op.describe(),
                                    message=f"the mapping has {exp.op.anon_huge_kb} kB of PMD-mapped THP afterwards, "
                                            f"the model says {exp.anon_huge_kb} kB",
                                    expected=f"AnonHugePages {exp.anon_huge_kb} kB",
                                    observed=f"AnonHugePages {exp.op.anon_huge_kb} kB"))
    release = [r for r in records if r.callback == Callback.RELEASE]
    exit_op = next((op for op in ops if op.kind == "exit"), None)
    if exit_op and release and release[0].time_ns < exit_op.t0:
        findings.append(Finding(rule="release", message="release came before the workload's exit",
                                op="exit", window=window_around(records, release[0].seq)))
    helpers = {op.ksmd_pid for op in ops if op.ksmd_pid}
    background = [r for r in records if r.pid != pid and r.pid not in helpers]
    return Judgement(trace=trace, findings=findings, background=background, checked_ops=checked)
