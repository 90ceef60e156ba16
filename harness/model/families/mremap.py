"""mremap: shrink and grow in place, move, expand by moving (guest/workloads/mmops-mremap.c;
docs/mremap.md has the kernel functions, read from 6.1 and 6.12).

  shrink in place   do_munmap of the tail [addr+new_len, addr+old_len): a VMA split at an unaligned
                    new end inside a 2 MiB block the VMA covers (__split_huge_pmd's CLEAR), then
                    UNMAP of exactly the tail (unmap_vmas), as munmap.
  grow in place     the VMA extended (vma_adjust / vma_merge_extend): no window.
  move              (MREMAP_FIXED: do_munmap of the target first, nothing where nothing is mapped;
                    a shrinking move: the tail first, as above) then move_vma:
                      move_page_tables: one UNMAP window over the old range, blockable, with
                      invalidate_range inside on 6.1.  A PMD-mapped THP whose whole 2 MiB the
                      extent covers, at a PMD-aligned destination, moves as one PMD
                      (move_huge_pmd: no window); any other is split first: a 2 MiB CLEAR
                      nested in the UNMAP (split_huge_pmd).  On 6.12 try_realign_addr moves an
                      unaligned start down to its PMD boundary when the destination is mutually
                      aligned, both VMAs start there, and nothing is mapped below either: the
                      window then starts at that boundary.
                      do_munmap of the old range: its VMA splits, then UNMAP of exactly the old
                      range (no pages are left there, but the window opens).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from harness.events import Event, Record
from harness.model.callsites import register_judged
from harness.model.expect import Expectation, Want, _finding, _ir, _split_want
from harness.model.families._common import register, windows_then
from harness.model.findings import Finding
from harness.model.ops import HPAGE, PAGE, USER_ADDR_LIMIT, AddressSpace, Block, ModelError, Op, Vma, block
from harness.model.versions import Features

MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MAX_MAPPING = 1 << 30
SCENARIO = "mremap"


def _munmap(s: int, e: int, aspace: AddressSpace, f: Features, why: str) -> list[Want]:
    """do_munmap of [s, e): the VMA splits at its ends, then UNMAP exactly the range."""
    wants = []
    for at in (s, e):
        b = aspace.split_at(at)
        if b:
            wants.append(_split_want(b, f"{why} splits the VMA at {at:#x}"))
    wants.append(Want(Event.UNMAP, s, e, f"{why}: UNMAP exactly the range, unmap_vmas", invalidate_range=_ir(f, s, e)))
    aspace.remove(s, e)
    return wants


def _realigned(s: int, length: int, ns: int, vma: Vma, aspace: AddressSpace, f: Features) -> int:
    """Where move_page_tables starts (and opens its window): s, or on 6.12 the PMD boundary below it
    (try_realign_addr, when the copy reaches a PMD boundary)."""
    off = s % HPAGE
    if not f.mremap_realign or not off or length < HPAGE - off or off != ns % HPAGE:
        return s
    # can_align_down on both sides: the VMA starts at the address, and nothing is mapped below it
    # down to the boundary (the new VMA starts at ns unless it merged with one ending there).
    if vma.start != s or aspace.overlapping(s - off, s) or aspace.overlapping(ns - off, ns):
        return s
    return s - off


def _move_blocks(s: int, e: int, ws: int, ns: int, aspace: AddressSpace) -> tuple[list[Want], dict[int, Block]]:
    """move_page_tables' walk over [ws, e) to ns - (s - ws), PMD extent by PMD extent (our mappings
    never span a 1 GiB PUD extent): the split CLEARs nested in its window, and the blocks that move
    whole (by their new address)."""
    splits: list[Want] = []
    moved: dict[int, Block] = {}
    old, new = ws, ns - (s - ws)
    while old < e:
        extent = min(block(old)[1] - old, e - old, block(new)[1] - new)
        b0 = block(old)[0]
        blk = aspace.blocks.get(b0)
        if blk is not None and blk.present and blk.pmd_mapped:
            if extent == HPAGE:
                moved[new] = aspace.blocks.pop(b0)        # move_huge_pmd
            else:
                splits.append(_split_want((b0, b0 + HPAGE), f"mremap moves {extent:#x} bytes of a PMD-mapped THP "
                                          f"to {new:#x}: split_huge_pmd in move_page_tables"))
                blk.pmd_mapped = False
        old, new = old + extent, new + extent
    return splits, moved


def _relocate(s: int, e: int, ns: int, moved: dict[int, Block], aspace: AddressSpace) -> dict[int, Block]:
    """The blocks at the new address after a move of [s, e) to ns: those that moved as one PMD, and,
    for the pages of a block that moved as PTEs, its state where they land (one block if the move
    keeps the PMD offset, two if not: a large folio straddling them)."""
    out = dict(moved)
    shift = ns - s
    for b0, blk in aspace.blocks.items():
        if not (blk.present and b0 < e and s < b0 + HPAGE):
            continue
        lo, hi = max(b0, s) + shift, min(b0 + HPAGE, e) + shift
        for n0 in range(block(lo)[0], hi, HPAGE):
            if n0 not in out:
                out[n0] = Block(pmd_mapped=False, large_folio=blk.large_folio)
    return out


def _no_merge(ns: int, ne: int, vma: Vma, aspace: AddressSpace) -> None:
    """copy_vma merges the new VMA with a compatible neighbour: the model's VMAs would be wrong."""
    if any(v.end == ns or v.start == ne for v in aspace.vmas if (v.prot, v.thp) == (vma.prot, vma.thp)):
        raise ModelError(f"mremap to [{ns:#x}, {ne:#x}), next to a VMA of the workload it may merge with")


def _huge_kb(ns: int, ne: int, aspace: AddressSpace) -> int:
    """AnonHugePages of the VMAs inside [ns, ne), as smaps_kb sums it."""
    inside = [v for v in aspace.vmas if ns <= v.start and v.end <= ne]
    return sum(2048 for b0, blk in aspace.blocks.items() if blk.pmd_mapped and blk.present
               and any(v.start <= b0 and b0 + HPAGE <= v.end for v in inside))


def _grow(lo: int, hi: int, aspace: AddressSpace) -> None:
    """mmops touches grown pages: first-touch faults, a THP for each whole block whose PMD was none."""
    vma = aspace.vma_at(lo)
    assert vma is not None
    aspace.access(lo, hi)
    for b0 in range(block(lo)[0], hi, HPAGE):
        if vma.thp and lo <= b0 and b0 + HPAGE <= hi and b0 not in aspace.populated_pmds:
            aspace.blocks[b0] = Block()
        aspace.populated_pmds.add(b0)


def expect_mremap(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    s, e = op.start, op.end
    ns, ne = op.extra["new_start"], op.extra["new_end"]
    flags = op.extra["flags"]
    if not ns < ne or ns % PAGE or ne % PAGE or ne > USER_ADDR_LIMIT:
        raise ModelError(f"mremap: the new range [{ns:#x}, {ne:#x}) is empty, not page-aligned or not user space")
    if ne - ns > MAX_MAPPING:
        # The model walks a grown range page by page (and mmops's regions are 1 GiB apart).
        raise ModelError(f"mremap to {ne - ns:#x} bytes: the model follows mappings of at most 1 GiB")
    vma = aspace.vma_at(s)
    if vma is None or e > vma.end:
        raise ModelError(f"mremap of [{s:#x}, {e:#x}), which is not inside one VMA of the workload")
    if any(p in aspace.ksm_pages for p in range(s, e, PAGE)):
        raise ModelError("mremap of KSM pages (move_vma's ksm_madvise unmerges them) is not modelled")
    old_len, new_len = e - s, ne - ns
    wants: list[Want] = []
    if ns == s:
        if new_len < old_len:
            wants += _munmap(s + new_len, e, aspace, f, "mremap shrinks in place: do_munmap of the tail")
        elif new_len > old_len:
            if e != vma.end:
                raise ModelError("mremap grew a piece in place that does not end its VMA")
            aspace.vmas[aspace.vmas.index(vma)] = replace(vma, end=ne)
        huge_kb = _huge_kb(ns, ne, aspace)
        if new_len > old_len:
            _grow(e, ne, aspace)
    else:
        if flags & MREMAP_FIXED and aspace.overlapping(ns, ne):
            raise ModelError("mremap onto a mapping of the workload (do_munmap of the target) is not modelled")
        _no_merge(ns, ne, vma, aspace)
        if old_len > new_len:
            wants += _munmap(s + new_len, e, aspace, f, "a shrinking mremap_to: do_munmap of the tail first")
            e, old_len = s + new_len, new_len
        ws = _realigned(s, old_len, ns, vma, aspace, f)
        splits, moved = _move_blocks(s, e, ws, ns, aspace)
        why = "move_vma: move_page_tables" + (f", realigned down to {ws:#x} (try_realign_addr)" if ws != s else "")
        wants.append(Want(Event.UNMAP, ws, e, why, nested=tuple(splits), invalidate_range=_ir(f, ws, e)))
        landed = _relocate(s, e, ns, moved, aspace)
        young = {p for p in aspace.young if s <= p < e}
        wants += _munmap(s, e, aspace, f, "move_vma: do_munmap of the old range")
        aspace.vmas.append(Vma(ns, ne, vma.prot, vma.thp))
        aspace.vmas.sort(key=lambda v: v.start)
        aspace.blocks.update(landed)
        aspace.populated_pmds.update(range(block(ns)[0], ns + old_len, HPAGE))
        aspace.young.difference_update(young)
        aspace.young.update(p - s + ns for p in young)    # move_pte keeps the accessed bit
        huge_kb = _huge_kb(ns, ne, aspace)
        if new_len > old_len:
            _grow(ns + old_len, ne, aspace)

    def reported(records: Sequence[Record]) -> list[Finding]:
        observed = op.extra["new_huge_kb"]
        if observed < 0 or observed == huge_kb:
            return []
        return [_finding("thp-state", op, f"the new range has {observed} kB of PMD-mapped THP right after mremap, "
                         f"the model says {huge_kb} kB", None, records, expected=f"AnonHugePages {huge_kb} kB",
                         observed=f"AnonHugePages {observed} kB")]

    return windows_then(op, wants, f, reported)


register("mremap", expect_mremap, ints=("new_start", "new_end", "flags", "new_huge_kb"))
register_judged("move_page_tables", SCENARIO)
register_judged("unmap_vmas", SCENARIO)
register_judged("__split_huge_pmd", SCENARIO)
