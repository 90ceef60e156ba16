"""hugetlb mappings of 2 MiB pages (guest/workloads/mmops-hugetlb.c; docs/hugetlb.md).

The windows of each operation, from mm/hugetlb.c, mm/memory.c, mm/mmap.c (6.1) or mm/vma.c (6.12),
mm/mprotect.c, mm/mremap.c and mm/madvise.c of 6.1 and 6.12:

  fault (htouch, hverify)   hugetlb_no_page: none.  Two shared mappings of a file at 1 GiB-aligned
                            addresses share a PMD page (huge_pmd_share): none either.
  MADV_DONTNEED             zap_page_range_single: CLEAR over the range widened by
                            adjust_range_if_pmd_sharing_possible (a VM_MAYSHARE VMA spanning an aligned
                            1 GiB: the range grows to whole GiBs inside that span); on 6.1 the zap,
                            __unmap_hugepage_range, nests an UNMAP of the same widened range.
  munmap                    a split inside the VMA (hugetlb_split, backported to both) unshares the
                            PMDs of the GiB around the split point when the VMA is VM_MAYSHARE and
                            holds that whole GiB: hugetlb_unshare_pmds' CLEAR [GiB); then unmap_vmas'
                            UNMAP of exactly the range, and on 6.1 __unmap_hugepage_range's UNMAP per
                            VMA inside it (the VMAs are whole pieces by then: no widening).
  mprotect                  the same splits, then hugetlb_change_protection: PROTECTION_VMA over each
                            piece (widening cannot apply: the piece is the whole VMA).
  fork                      copy_hugetlb_page_range: CLEAR over each private hugetlb VMA with an
                            anon_vma (vma_needs_copy), in address order with copy_page_range's
                            PROTECTION_PAGE of anonymous VMAs; shared hugetlb VMAs are not copied.
  COW write after fork      hugetlb_wp: CLEAR over the huge page, when an unreserved page is free
                            (otherwise the reservation owner unmaps it from the children instead:
                            unmap_ref_private, in their mms).
  mremap (move)             move_hugetlb_page_tables: CLEAR over the old range, widened; then munmap
                            of the old range as above.
  COW with the pool empty   the reservation owner's hugetlb_wp finds no page to copy into and takes
                            the page from the children instead: unmap_ref_private ->
                            unmap_hugepage_range over the huge page in each child's VMA, a window in
                            the child's mm opened by the owner's task (6.12: unmap_hugepage_range's
                            CLEAR; 6.1: __unmap_hugepage_range's UNMAP), seen only with the probe on
                            the child (hsteal).

On 6.1 every window's end calls invalidate_range over the window's range first (hugetlb_wp also
calls it once inside).  All windows are blockable and opened by the workload's task.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

from harness.events import Event, Record
from harness.model.callsites import register_judged
from harness.model.expect import Allow, Expectation, Want, _finding, _ir
from harness.model.families._common import family_state, register, windows_then
from harness.model.findings import Finding
from harness.model.ops import HPAGE, PAGE, AddressSpace, ModelError, Op
from harness.model.versions import Features

SCENARIO = "hugetlb"
PUD = 1 << 30
REGION_BASE = 0x7E0000000000     # mmops's mappings live in [REGION_BASE, REGION_BASE + 16 GiB)
REGION_END = REGION_BASE + 16 * PUD


@dataclass(frozen=True)
class HugeVma:
    start: int
    end: int
    shared: bool                   # VM_MAYSHARE
    anon: bool = False             # has an anon_vma (a private VMA that faulted a page)
    prot: str = "rw"
    present: frozenset[int] = field(default_factory=frozenset)   # huge pages mapped (private VMAs)


def _vmas(aspace: AddressSpace) -> list[HugeVma]:
    """The hugetlb VMAs, kept apart from the anonymous ones so that mmops.c's operations (whose
    rules know only anonymous memory) never see a hugetlb VMA."""
    return family_state(aspace, "hugetlb", list[HugeVma])


def _set(aspace: AddressSpace, vmas: list[HugeVma]) -> None:
    _vmas(aspace)[:] = sorted(vmas, key=lambda v: v.start)


def _down(a: int, to: int = PUD) -> int:
    return a - a % to


def _up(a: int, to: int = PUD) -> int:
    return _down(a + to - 1, to)


def widen(v: HugeVma, start: int, end: int) -> tuple[int, int]:
    """adjust_range_if_pmd_sharing_possible: a VM_MAYSHARE VMA spanning an aligned GiB widens a range
    that reaches into that span to whole GiBs (only where it stays inside the span)."""
    v_start, v_end = _up(v.start), _down(v.end)
    if not v.shared or not v_end > v_start or end <= v_start or start >= v_end:
        return start, end
    return (_down(start) if start > v_start else start), (_up(end) if end < v_end else end)


def _want(event: Event, r: tuple[int, int], f: Features, why: str, nested: tuple[Want, ...] = ()) -> Want:
    return Want(event, r[0], r[1], why, nested=nested, invalidate_range=_ir(f, *r))


def _overlapping(aspace: AddressSpace, start: int, end: int) -> list[HugeVma]:
    return [v for v in _vmas(aspace) if v.start < end and start < v.end]


def _aligned(op: Op) -> None:
    if op.start % HPAGE or op.end % HPAGE:
        raise ModelError(f"{op.describe()}: hugetlb operations take whole 2 MiB pages")


def _split(aspace: AddressSpace, at: int, f: Features) -> list[Want]:
    """Split the hugetlb VMA around `at` there (__split_vma); hugetlb_split's unshare, if any."""
    vmas = _vmas(aspace)
    v = next((v for v in vmas if v.start < at < v.end), None)
    if v is None:
        return []
    wants = []
    floor = _down(at)
    if v.shared and at % PUD and floor >= v.start and floor + PUD <= v.end:
        wants.append(_want(Event.CLEAR, (floor, floor + PUD), f,
                           f"split at {at:#x} inside a shared VMA holding its whole GiB: hugetlb_split -> "
                           f"hugetlb_unshare_pmds"))
    low = frozenset(p for p in v.present if p < at)
    _set(aspace, [x for x in vmas if x is not v] + [replace(v, end=at, present=low),
                                                   replace(v, start=at, present=v.present - low)])
    return wants


def _munmap(aspace: AddressSpace, start: int, end: int, f: Features, why: str) -> list[Want]:
    """do_munmap of [start, end): the splits' unshares, unmap_vmas' UNMAP (6.1: a nested UNMAP per
    hugetlb VMA from __unmap_hugepage_range), the VMAs gone."""
    if not _overlapping(aspace, start, end):
        return []
    if aspace.overlapping(start, end):
        raise ModelError(f"munmap [{start:#x}, {end:#x}) covers anonymous and hugetlb VMAs: not modelled")
    wants = _split(aspace, start, f) + _split(aspace, end, f)
    pieces = _overlapping(aspace, start, end)
    nested = tuple(_want(Event.UNMAP, widen(v, v.start, v.end), f, "__unmap_hugepage_range (6.1)")
                   for v in pieces) if f.hugetlb_nested_unmap else ()
    wants.append(_want(Event.UNMAP, (start, end), f, f"{why}: unmap_vmas", nested))
    _set(aspace, [v for v in _vmas(aspace) if v not in pieces])
    return wants


def expect_hmap(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """mmap of hugetlb memory in a free range: no window."""
    _aligned(op)
    if _overlapping(aspace, op.start, op.end) or aspace.overlapping(op.start, op.end):
        raise ModelError(f"{op.describe()} overlaps a mapping the model already has")
    _set(aspace, [*_vmas(aspace), HugeVma(op.start, op.end, shared=bool(op.extra["shared"]))])
    return Expectation(op)


def expect_fault(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """htouch and hverify: faults (hugetlb_no_page; a private VMA gets its anon_vma there) and
    accesses to mapped pages open no window, even where a PMD page comes to be shared."""
    _aligned(op)
    out = []
    for v in _vmas(aspace):
        if v.start < op.end and op.start < v.end and not v.shared:
            pages = range(max(v.start, op.start), min(v.end, op.end), HPAGE)
            v = replace(v, anon=True, present=v.present | frozenset(pages))
        out.append(v)
    _set(aspace, out)
    return Expectation(op)


def expect_hdontneed(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """MADV_DONTNEED per VMA: zap_page_range_single's CLEAR over the widened range (6.1: the nested
    UNMAP of __unmap_hugepage_range, widened the same way)."""
    _aligned(op)
    wants, out = [], []
    for v in _vmas(aspace):
        if v.start < op.end and op.start < v.end:
            r = widen(v, max(v.start, op.start), min(v.end, op.end))
            nested = (_want(Event.UNMAP, r, f, "__unmap_hugepage_range (6.1)"),) if f.hugetlb_nested_unmap else ()
            wants.append(_want(Event.CLEAR, r, f, "MADV_DONTNEED: zap_page_range_single, widened for shared PMDs",
                               nested))
            v = replace(v, present=frozenset(p for p in v.present if not op.start <= p < op.end))
        out.append(v)
    _set(aspace, out)
    return Expectation(op, wants=wants)


def expect_hunmap(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    _aligned(op)
    return Expectation(op, wants=_munmap(aspace, op.start, op.end, f, "munmap"))


def expect_hprotect(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """mprotect_fixup per VMA whose protection changes: the splits (start first), then
    hugetlb_change_protection's PROTECTION_VMA over the piece."""
    _aligned(op)
    wants: list[Want] = []
    for v in _overlapping(aspace, op.start, op.end):
        if v.prot == op.prot:
            continue     # mprotect_fixup: flags unchanged, nothing at all
        s, e = max(v.start, op.start), min(v.end, op.end)
        wants += _split(aspace, s, f) + _split(aspace, e, f)
        piece = next(x for x in _vmas(aspace) if x.start == s)
        wants.append(_want(Event.PROTECTION_VMA, widen(piece, s, e), f, "mprotect: hugetlb_change_protection"))
        _set(aspace, [replace(x, prot=op.prot) if x is piece else x for x in _vmas(aspace)])
    return Expectation(op, wants=wants)


def _outside_region(s: int, e: int) -> bool:
    """Outside the region mmops makes its mappings in: the program's own stack, data and heap."""
    return not (s < REGION_END and REGION_BASE < e)


def expect_hcow(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """fork, then the parent writes the huge page at op.start while the child keeps it.

    dup_mmap copies the VMAs in address order: copy_page_range's PROTECTION_PAGE for anonymous VMAs
    (as for the cow operation), copy_hugetlb_page_range's CLEAR for private hugetlb VMAs with an
    anon_vma.  The parent's write is a COW fault: hugetlb_wp copies the page into a free unreserved
    one under a CLEAR of the huge page.  The process's own private VMAs may be write-protected too,
    and its stack copied on write, as in the cow operation."""
    v = next((v for v in _vmas(aspace) if v.start <= op.start < v.end), None)
    if v is None or v.shared or op.start not in v.present:
        raise ModelError(f"{op.describe()}: hcow writes a present page of a private hugetlb mapping")
    if op.extra["free_huge"] < 1:
        raise ModelError(f"{op.describe()}: no unreserved huge page was free, so the owner unmaps the page from "
                         f"the child (unmap_ref_private) instead of copying it; not modelled")
    copies = [(a.start, _want(Event.PROTECTION_PAGE, (a.start, a.end), f, "fork: copy_page_range"))
              for a in aspace.vmas]
    copies += [(h.start, _want(Event.CLEAR, (h.start, h.end), f, "fork: copy_hugetlb_page_range"))
               for h in _vmas(aspace) if not h.shared and h.anon]
    wants = [w for _, w in sorted(copies, key=lambda c: c[0])]
    wants.append(_want(Event.CLEAR, (op.start, op.start + HPAGE), f, "COW of a huge page shared with the child: "
                       "hugetlb_wp"))
    allows = [Allow(Event.PROTECTION_PAGE, "fork write-protects the process's own private VMAs",
                    _outside_region),
              Allow(Event.CLEAR, "the parent's COW of its own stack or data after fork",
                    lambda s, e: e - s == PAGE and _outside_region(s, e))]
    return Expectation(op, wants=wants, allows=allows)


def expect_hmremap(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """mremap(MAYMOVE | FIXED) of [start, end) to a free range: move_vma -> move_page_tables ->
    move_hugetlb_page_tables' CLEAR over the old range widened for the old VMA, then do_munmap of the
    old range; the destination was empty, so mremap_to's munmap of it opens nothing."""
    _aligned(op)
    new_start, new_end = op.extra["new_start"], op.extra["new_end"]
    v = next((v for v in _vmas(aspace) if v.start <= op.start and op.end <= v.end), None)
    if v is None or new_end - new_start != op.end - op.start:
        raise ModelError(f"{op.describe()}: hmremap moves a range of one hugetlb VMA, keeping its length")
    if _overlapping(aspace, new_start, new_end) or aspace.overlapping(new_start, new_end):
        raise ModelError(f"{op.describe()}: the destination is not free")
    wants = [_want(Event.CLEAR, widen(v, op.start, op.end), f, "mremap: move_hugetlb_page_tables")]
    wants += _munmap(aspace, op.start, op.end, f, "mremap unmaps the old range")
    moved = frozenset(p - op.start + new_start for p in v.present if op.start <= p < op.end)
    _set(aspace, [*_vmas(aspace), replace(v, start=new_start, end=new_end, present=moved)])
    return Expectation(op, wants=wants)


def expect_hsteal(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """The owner's write to a private huge page it shares with a child, with no unreserved page
    free, recorded on the child's mm: unmap_ref_private unmaps the page from the child's VMA (a
    private copy of the owner's: nothing widened), one window from the owner's task; the child's
    VMA holds no huge page there afterwards."""
    v = next((v for v in _vmas(aspace) if v.start <= op.start < v.end), None)
    if v is None or v.shared or op.start not in v.present:
        raise ModelError(f"{op.describe()}: hsteal writes a present page of a private hugetlb mapping")
    if op.extra["free_huge"] != 0:
        raise ModelError(f"{op.describe()}: {op.extra['free_huge']} unreserved huge pages were free, so the write "
                         f"copies the page (hugetlb_wp) and the child keeps it; the scenario must empty the pool")
    event, site = (Event.UNMAP, "__unmap_hugepage_range") if f.hugetlb_nested_unmap else \
        (Event.CLEAR, "unmap_hugepage_range")
    want = _want(event, (op.start, op.start + HPAGE), f, f"COW with the pool empty: unmap_ref_private -> {site} "
                 f"in the child's mm")

    def reported(records: Sequence[Record]) -> list[Finding]:
        kb = op.extra["child_huge_kb"]
        return [_finding("steal", op, f"the child still maps {kb} kB of hugetlb memory at the page after the "
                         f"owner's write", None, records, expected="0 kB: unmap_ref_private unmapped it",
                         observed=f"{kb} kB")] if kb else []

    return windows_then(op, [want], f, reported)


for _kind in ("hmap", "hfile", "hfill"):
    register(_kind, expect_hmap, ints=("shared",))
register("htouch", expect_fault)
register("hverify", expect_fault)
register("hunmap", expect_hunmap)
register("hdontneed", expect_hdontneed)
register("hprotect", expect_hprotect)
register("hcow", expect_hcow, ints=("free_huge",))
register("hmremap", expect_hmremap, ints=("new_start", "new_end"))
register("hsteal", expect_hsteal, ints=("free_huge", "child_huge_kb"))

# The sites whose windows the rules above judge.  zap_page_range_single (MADV_DONTNEED) and
# unmap_vmas (munmap) are judged for their hugetlb widening here; 6.12's unmap_hugepage_range
# is reached only from unmap_ref_private, in the children's mms: the steal run attaches the probe
# to the child (docs/hugetlb.md).
for _site in ("__unmap_hugepage_range", "unmap_hugepage_range", "zap_page_range_single", "unmap_vmas",
              "copy_hugetlb_page_range", "hugetlb_wp", "hugetlb_change_protection", "hugetlb_unshare_pmds",
              "move_hugetlb_page_tables"):
    register_judged(_site, SCENARIO)
