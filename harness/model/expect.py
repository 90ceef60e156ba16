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
from harness.model.ops import HPAGE, PAGE, AddressSpace, Block, ModelError, Op, block
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
    thp_known: bool = True     # False: the model cannot say (a collapse whose allocation failed)
    # Whose windows the operation causes: the workload's unless a kernel thread does the work (ksmd).
    pid: Optional[int] = None
    # Rules that are not a sequence of windows (KSM's per-page counts, aging callbacks): given the
    # operation's top-level windows, its own records (its task, its time) and the whole trace.
    check: Optional[Callable[[list[Pair], list[Record], Sequence[Record]], list[Finding]]] = None


def _finding(rule: str, op: Op, message: str, rec: Optional[Record], records: Sequence[Record],
             expected: str = "", observed: str = "") -> Finding:
    """A finding of a per-operation rule, with the records around `rec` as evidence."""
    return Finding(rule=rule, op=op.describe(), message=message, expected=expected,
                   observed=observed or (rec.describe() if rec else ""),
                   window=window_around(records, rec.seq) if rec else ())


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

    def check(pairs: list[Pair], _own: list[Record], records: Sequence[Record]) -> list[Finding]:
        findings: list[Finding] = []

        def add(message: str, rec: Optional[Record] = None, expected: str = "") -> None:
            findings.append(_finding("ksm", op, message, rec, records, expected=expected,
                                     observed=f"{len(pairs)} windows from ksmd (pid {op.ksmd_pid})"))

        if op.merging_pages != len(pages):
            add(f"{op.merging_pages} of {len(pages)} identical pages merged after full_scans went "
                f"{op.full_scans_before} -> {op.full_scans}", expected=f"ksm_merging_pages {len(pages)}")
        per_page: dict[int, int] = {}
        for pair in pairs:
            s, e = pair.range
            if pair.event != Event.CLEAR or e - s != PAGE or s not in pages:
                add(f"ksmd window {pair.describe()} is not a 4 KiB CLEAR on a page of the region", pair.start)
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


def expect_cold(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """MADV_COLD on PTE-mapped pages (madvise_cold_or_pageout_pte_range, 6.1 and 6.12): each page on an
    LRU list and mapped only here has its young PTE made old and PG_referenced cleared, with no
    callback.  tlb_remove_tlb_entry widens the mmu_gather's range by each PTE made old, and the flush
    at the VMA's end calls invalidate_range (6.1) over that hull: exactly one, or none if no PTE was
    young.

    A page that is not on an LRU list is skipped and keeps its young PTE (`!PageLRU(page)` →
    continue).  A page the workload faulted waits in its CPU's lru_add batch until that batch is
    drained, and madvise_cold drains only its own CPU's (lru_add_drain): which pages MADV_COLD skips
    depends on where the workload ran.  The model therefore needs the workload pinned to one CPU (the
    cpu operation) for every access before MADV_COLD, and refuses otherwise.  Seen on 6.1: a workload
    that moved from CPU 0 to CPU 1 between map and MADV_COLD had the flush stop 3 or 4 pages short of
    its mapping's end, those PTEs stayed young, and khugepaged then found them referenced without
    asking test_young.

    A PMD-mapped THP in the range is split or aged there instead, which the model does not encode."""
    for b0, blk in aspace.blocks.items():
        if blk.pmd_mapped and b0 < op.end and op.start < b0 + HPAGE:
            raise ModelError(f"MADV_COLD over the PMD-mapped THP at {b0:#x} is not modelled")
    if aspace.cpu is None or aspace.access_cpus - {aspace.cpu}:
        raise ModelError("MADV_COLD skips pages still in another CPU's lru_add batch (it drains only its own "
                         "CPU's): pin the workload to one CPU (cpu:N) before it maps or touches memory")
    young = sorted(p for p in aspace.young if op.start <= p < op.end)
    hull = [(young[0], young[-1] + PAGE)] if young else []
    aspace.make_old(op.start, op.end)

    def check(pairs: list[Pair], own: list[Record], records: Sequence[Record]) -> list[Finding]:
        findings = _match(pairs, [], [], op.describe(), records, f)
        flushes = [r for r in own if r.callback == Callback.INVALIDATE_RANGE]
        if f.invalidate_range and [(r.start, r.end) for r in flushes] != hull:
            expected = (f"invalidate_range [{hull[0][0]:#x}, {hull[0][1]:#x}): the hull of the {len(young)} "
                        f"young PTEs made old" if hull else "no flush: no PTE in the range was young")
            findings.append(_finding("cold", op, "MADV_COLD's TLB flush does not cover exactly the PTEs it had "
                                     "to make old", flushes[0] if flushes else None, records, expected=expected,
                                     observed="; ".join(r.describe() for r in flushes) or "no invalidate_range"))
        return findings

    return Expectation(op, check=check)


def expect_khugepaged(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """khugepaged scanning a mapping made eligible with MADV_HUGEPAGE (§3 idle page tracking, khugepaged).

    hpage_collapse_scan_pmd (and __collapse_huge_page_isolate after the collapse's own window) counts a
    PTE as referenced when `pte_young || folio young || folio referenced || mmu_notifier_test_young`:
    test_young is asked exactly for the PTEs the CPU has not marked accessed since MADV_COLD, and never
    for the others.  A block with no referenced PTE is left alone (SCAN_LACK_REFERENCED_PAGE); a block
    with one is collapsed (unless the huge page allocation fails): one CLEAR over the whole 2 MiB block
    from collapse_huge_page, after which the block is PMD-mapped.
    """
    blocks = [b for b in range(block(op.start)[0], op.end, HPAGE)
              if op.start <= b and b + HPAGE <= op.end and aspace.owns(b, b + HPAGE)
              and not (aspace.blocks.get(b) and aspace.blocks[b].pmd_mapped)]
    young = {p for p in aspace.young if op.start <= p < op.end}
    old = {p for b in blocks for p in range(b, b + HPAGE, PAGE) if p not in young}
    collapsing = [b for b in blocks if any(b <= p < b + HPAGE for p in young)]
    may_fail = op.collapse_alloc_failed > 0
    wants = [Want(Event.CLEAR, b, b + HPAGE, "khugepaged: collapse_huge_page of a block with a referenced PTE",
                  invalidate_range=_ir(f, b, b + HPAGE)) for b in collapsing]

    def check(pairs: list[Pair], own: list[Record], records: Sequence[Record]) -> list[Finding]:
        findings: list[Finding] = []
        tested: set[int] = set()
        for r in own:
            if r.callback == Callback.TEST_YOUNG:
                if r.start in young:
                    findings.append(_finding("test-young", op, f"test_young {r.start:#x} on a page whose PTE is "
                                           f"young: khugepaged asks the secondary MMU only about old PTEs", r, records,
                                           expected="no test_young for a young PTE"))
                elif r.start not in old:
                    findings.append(_finding("test-young", op, f"test_young {r.start:#x} outside the mapping's "
                                           f"eligible blocks", r, records))
                tested.add(r.start)
            elif r.callback in (Callback.CLEAR_YOUNG, Callback.CLEAR_FLUSH_YOUNG):
                findings.append(_finding("test-young", op, f"{r.callback.name.lower()} from khugepaged, which only "
                                       f"tests", r, records, expected="test_young only"))
        untested = sorted(old - tested)
        if untested:
            findings.append(_finding("test-young", op, f"{len(untested)} old PTEs khugepaged scanned were never "
                                   f"tested with test_young, first {untested[0]:#x}", None, records,
                                   expected=f"test_young at each of the {len(old)} old PTEs",
                                   observed=f"{len(tested)} pages tested"))
        allows = [Allow(Event.CLEAR, "a collapse whose huge page allocation may have failed and been retried",
                        lambda s, e: s in collapsing and e == s + HPAGE)] if may_fail else []
        findings += _match(pairs, [] if may_fail else wants, allows, op.describe(), records, f)
        return findings

    if not may_fail:
        for b in collapsing:
            aspace.blocks[b] = Block()
            aspace.populated_pmds.add(b)
    # A failed allocation leaves the THP state unknown: khugepaged may have retried and succeeded.
    return Expectation(op, pid=op.khugepaged_pid, check=check, thp_known=not may_fail)


def expect_reclaim(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """Proactive reclaim of the workload's memcg from its own task (memory.reclaim), with swap.

    shrink_folio_list checks each folio's references (folio_referenced_one) before try_to_unmap:
      * classic LRU, and MGLRU on kernels whose look-around has no notifier (6.1): clear_flush_young
        on each PTE (ptep_clear_flush_young_notify);
      * MGLRU on 6.12: lru_gen_look_around instead, which calls clear_young (ptep_clear_young_notify)
        on the PTE and its young neighbours, and the MGLRU page table walk may age any VMA the same way;
        clear_flush_young is then not used for PTE-mapped folios.
    A page that goes to swap is unmapped by try_to_unmap_one: a 4 KiB CLEAR from the reclaiming task,
    after its references were checked.  Nothing ever calls test_young here.
    """
    mglru = op.lru_gen > 0 and bool(op.lru_gen & 1)
    aging = Callback.CLEAR_YOUNG if mglru and f.mglru_clear_young else Callback.CLEAR_FLUSH_YOUNG
    other = Callback.CLEAR_FLUSH_YOUNG if aging == Callback.CLEAR_YOUNG else Callback.CLEAR_YOUNG
    why = (f"lru_gen/enabled {op.lru_gen:#06x} on {f.label}: "
           + ("MGLRU look-around calls clear_young" if aging == Callback.CLEAR_YOUNG
              else "folio_referenced_one calls clear_flush_young"))
    vmas = [(v.start, v.end) for v in op.vmas]

    def in_vma(s: int, e: int) -> bool:
        return any(vs <= s and e <= ve for vs, ve in vmas)

    def page_or_pmd(s: int, e: int) -> bool:
        return (e - s == PAGE and s % PAGE == 0) or (e - s == HPAGE and s % HPAGE == 0)

    def check(pairs: list[Pair], own: list[Record], records: Sequence[Record]) -> list[Finding]:
        findings: list[Finding] = []
        aged: dict[int, Record] = {}
        for r in own:
            if r.callback == aging:
                if not (page_or_pmd(r.start, r.end) and in_vma(r.start, r.end)):
                    findings.append(_finding("aging", op, f"{aging.name.lower()} [{r.start:#x}, {r.end:#x}) is not "
                                           f"one page or PMD of a VMA of the workload", r, records))
                    continue      # a broken kernel's range may span the address space: never enumerated
                for p in range(r.start, r.end, PAGE):
                    aged.setdefault(p, r)
            elif r.callback == other:
                findings.append(_finding("aging", op, f"{other.name.lower()} during reclaim, where {why}", r, records,
                                       expected=aging.name.lower()))
            elif r.callback == Callback.TEST_YOUNG:
                findings.append(_finding("aging", op, "test_young during reclaim: only khugepaged and DAMON ask it",
                                       r, records))
        in_region = [p for p in aged if op.start <= p < op.end]
        if not in_region:
            findings.append(_finding("aging", op, f"no {aging.name.lower()} on the mapping while reclaim scanned it "
                                   f"({why})", None, records, expected=f"{aging.name.lower()} on its pages",
                                   observed=f"{len(aged)} pages aged elsewhere"))
        unmapped: set[int] = set()
        for pair in pairs:
            s, e = pair.range
            if pair.event != Event.CLEAR or e - s != PAGE or not in_vma(s, e):
                findings.append(_finding("unexpected", op, f"unexpected window {pair.describe()} during reclaim",
                                       pair.start, records, expected="4 KiB CLEARs from try_to_unmap_one"))
                continue
            if s not in aged or aged[s].seq > pair.start.seq:
                findings.append(_finding("aging", op, f"page {s:#x} was unmapped for swap-out ({pair.describe()}) "
                                       f"before any {aging.name.lower()} on it: shrink_folio_list checks references "
                                       f"first", pair.start, records))
            unmapped.add(s)
        swapped = max(op.swap_kb, 0) // 4
        if op.swap_kb == 0:
            findings.append(_finding("reclaim", op, f"memory.reclaim swapped nothing of the mapping out "
                                   f"(errno {op.errno}); the scenario saw no reclaim", None, records))
        if len([p for p in unmapped if op.start <= p < op.end]) < swapped:
            findings.append(_finding("reclaim", op, f"{swapped} pages of the mapping are in swap but only "
                                   f"{len(unmapped)} were unmapped under a CLEAR window", None, records,
                                   expected=f"a 4 KiB CLEAR for each of the {swapped} swapped pages"))
        return findings

    return Expectation(op, check=check)


ExpectFn = Callable[[Op, AddressSpace, Features], Expectation]
_EXPECT: dict[str, ExpectFn] = {
    "dontneed": expect_dontneed, "mprotect": expect_mprotect, "munmap": expect_munmap,
    "split": expect_split, "cow": expect_cow, "fill": expect_write, "write": expect_write,
    "unmerge": expect_unmerge, "ksm": expect_ksm, "cold": expect_cold, "khugepaged": expect_khugepaged,
    "reclaim": expect_reclaim,
}


def register_expectation(kind: str, expect: ExpectFn) -> None:
    """An operation family's expectation for its operation `kind` (harness/model/families/)."""
    if kind in _EXPECT:
        raise ValueError(f"operation {kind!r} has an expectation already")
    _EXPECT[kind] = expect


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
        elif op.kind == "cpu":
            aspace.cpu = op.cpu                  # sched_setaffinity: no mm callback
            exp = Expectation(op)
        elif op.kind in ("touch", "exit", "verify", "oom"):
            # faults, reading, the exit line (release is contract), an allocation until killed: none
            exp = Expectation(op)
        elif op.kind in _EXPECT:
            exp = _EXPECT[op.kind](op, aspace, f)
        elif op.kind == "loop":
            exp = Expectation(op, checked=False)
        else:
            raise ModelError(f"operation {op.kind!r} has no expectation in the model")
        if op.kind in ("touch", "fill", "write", "verify"):
            aspace.access(op.start, op.end)      # the CPU marks every PTE it goes through accessed
        elif op.kind == "cow":
            aspace.access(op.start, op.start + PAGE)
        if op.name in regions and exp.thp_known:
            start, end, thp = regions[op.name]
            # THP mappings, and any other that khugepaged collapsed: the model knows its blocks.
            if thp or any(start <= b0 < end for b0 in aspace.blocks):
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
    cold = [op for op in ops if op.kind == "cold"]

    def gather_flush(r: Record) -> bool:
        """MADV_COLD's own mmu_gather flush: the workload's, during it, inside its range."""
        return r.pid == pid and any(op.t0 <= r.time_ns <= op.t1 and op.start <= r.start and r.end <= op.end
                                    for op in cold)

    trace = check_contract(records, f, nonblocking_pids=nonblocking_pids, expect_release=exited,
                           no_end=frozenset({Subscriber.PRIMARY}) if failing else frozenset(),
                           bare_invalidate=gather_flush)
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
            findings += exp.check(trace.top_level(window), window, records)
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
    helpers = {p for op in ops for p in (op.ksmd_pid, op.khugepaged_pid) if p}
    background = [r for r in records if r.pid != pid and r.pid not in helpers]
    return Judgement(trace=trace, findings=findings, background=background, checked_ops=checked)
