"""PAGEMAP_SCAN's write-protection and userfaultfd's UFFDIO_MOVE (guest/workloads/mmops-uffd.c;
docs/uffd.md has the kernel functions, read from 6.12; 6.1 has neither).

  pmscan       do_pagemap_scan with PM_SCAN_WP_MATCHING: per walk, one PROTECTION_VMA window over
               [walk start, the scan's end), blockable, opened before the walk looks at a VMA.  Without
               a userfaultfd no VMA allows write-protection (pagemap_scan_test_walk skips each): one
               window over exactly the range asked for, wherever it lies, nothing matched.
  uffd-wpscan  the whole mapping registered with a WP_ASYNC userfaultfd:
               scan 1 (no output vector): one window over the mapping; every present PTE made
                 uffd-wp (make_uffd_wp_pte, no nested window: every PMD holds a page table).
               writes to every STRIDE-th page: the async fault only drops the protection, no window.
               scan 2 (a vector of 1024 regions): the bounce buffer holds 512 regions
                 (PAGEMAP_WALK_SIZE >> PAGE_SHIFT); each written page is a region of its own, so
                 every 512 of them the walk stops with -ENOSPC at the next written page and a new
                 walk starts there: windows [start, end), [513th written page, end), ...
               UFFDIO_UNREGISTER: userfaultfd_clear_vma -> uffd_wp_range(false) -> change_protection:
                 PROTECTION_VMA from change_pud_range per chunk, as mprotect's.
  uffd-move    move_pages over [src, src + len): per source PMD, a PMD-mapped THP moved whole (both
               addresses 2 MiB aligned, 2 MiB left, the destination PMD none) by move_pages_huge_pmd
               under a 2 MiB CLEAR of the source, otherwise each 4 KiB page by move_pages_pte under a
               4 KiB CLEAR of the source page.  No window covers the destination.  The pages, and their
               data, are at the destination afterwards; the source is left unmapped.
"""

from __future__ import annotations

from typing import Sequence

from harness.events import Event, Record
from harness.model.callsites import register_judged
from harness.model.expect import Expectation, Want, _finding, _protection_chunks
from harness.model.families._common import register, windows_then
from harness.model.findings import Finding
from harness.model.ops import HPAGE, PAGE, AddressSpace, Block, ModelError, Op, Vma, block
from harness.model.versions import Features

SCENARIO = "pagemap-uffd"
BOUNCE_REGIONS = 512       # PAGEMAP_WALK_SIZE (PMD_SIZE) >> PAGE_SHIFT
SCAN_VEC = 1024            # the regions uffd-wpscan's second scan asks for (mmops-uffd.c)


def _require(have: bool, what: str, since: str, f: Features) -> None:
    if not have:
        raise ModelError(f"{what} arrived in {since}; {f.label} has none")


def expect_pmscan(op: Op, _aspace: AddressSpace, f: Features) -> Expectation:
    _require(f.pagemap_scan, "PAGEMAP_SCAN", "6.7", f)
    want = Want(Event.PROTECTION_VMA, op.start, op.end, "PAGEMAP_SCAN with PM_SCAN_WP_MATCHING: do_pagemap_scan")
    ret, walk_end = op.extra["ret"], op.extra["walk_end"]

    def reported(records: Sequence[Record]) -> list[Finding]:
        if (ret, walk_end) == (0, op.end):
            return []
        return [_finding("pagemap-scan", op, f"PAGEMAP_SCAN returned {ret} with walk_end {walk_end:#x}", None,
                         records, expected=f"0 regions (no VMA allows write-protection), walk_end {op.end:#x}")]

    return windows_then(op, [want], f, reported)


def _whole_vma(op: Op, aspace: AddressSpace) -> Vma:
    vmas = aspace.overlapping(op.start, op.end)
    if len(vmas) != 1 or (vmas[0].start, vmas[0].end) != (op.start, op.end):
        raise ModelError(f"{op.kind} is modelled on a mapping that is one whole VMA")
    return vmas[0]


def expect_wpscan(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    _require(f.pagemap_scan, "PAGEMAP_SCAN with a WP_ASYNC userfaultfd", "6.7", f)
    _whole_vma(op, aspace)
    for b in range(op.start, op.end, HPAGE):
        blk = aspace.blocks.get(b)
        if b not in aspace.populated_pmds or (blk is not None and blk.present):
            raise ModelError(f"uffd-wpscan over the block at {b:#x}: a PMD without a page table (pagemap_scan_pte_hole's "
                             f"uffd_wp_range) or a THP is not modelled")
    stride = op.extra["stride"]
    written = list(range(op.start, op.end, stride * PAGE))
    # pagemap_scan_push_range merges adjacent pages: with a stride of 1 the mapping is one region.
    regions = written if stride > 1 else written[:1]
    scan = "PAGEMAP_SCAN with PM_SCAN_WP_MATCHING: do_pagemap_scan"
    wants = [Want(Event.PROTECTION_VMA, op.start, op.end, f"{scan} (no output vector)")]
    # A walk ends with -ENOSPC at the region the bounce buffer has no room for; the scan stops once
    # the user's vector is full.
    walks = [op.start] + regions[BOUNCE_REGIONS:SCAN_VEC:BOUNCE_REGIONS]
    wants += [Want(Event.PROTECTION_VMA, w, op.end, f"{scan}, walk {i + 1} ({BOUNCE_REGIONS} regions a walk)")
              for i, w in enumerate(walks)]
    wants += [Want(Event.PROTECTION_VMA, s, e, "UFFDIO_UNREGISTER: uffd_wp_range -> change_protection")
              for s, e in _protection_chunks(op.start, op.end, aspace, f)]
    got = {k: op.extra[k] for k in ("scan1", "regions", "written")}
    expected = {"scan1": 0, "regions": min(len(regions), SCAN_VEC), "written": len(written)}

    def reported(records: Sequence[Record]) -> list[Finding]:
        return [] if got == expected else [
            _finding("pagemap-scan", op, f"the scans reported {got}", None, records, expected=str(expected))]

    aspace.access(op.start, op.end)
    return windows_then(op, wants, f, reported)


def expect_move(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    _require(f.uffd_move, "UFFDIO_MOVE", "6.8", f)
    dst, dst_end = op.extra["dst"], op.extra["dst_end"]
    vma = aspace.vma_at(op.start)
    if vma is None or not aspace.owns(op.start, op.end) or vma.prot != "rw" or dst_end - dst != op.end - op.start:
        raise ModelError("uffd-move is modelled from a writable range of one VMA to a new mapping of its size")
    wants: list[Want] = []
    moved_thps = 0
    src, to = op.start, dst
    while src < op.end:
        blk = aspace.blocks.get(block(src)[0])
        if blk is not None and blk.present and blk.pmd_mapped:
            if src % HPAGE or to % HPAGE or op.end - src < HPAGE:
                raise ModelError(f"UFFDIO_MOVE splitting the THP at {block(src)[0]:#x} is not modelled")
            wants.append(Want(Event.CLEAR, src, src + HPAGE, "UFFDIO_MOVE of a PMD-mapped THP: move_pages_huge_pmd"))
            blk.present = blk.pmd_mapped = blk.large_folio = False
            aspace.populated_pmds.discard(src)
            aspace.blocks[to] = Block()
            moved_thps += 1
            step = HPAGE
        else:
            if blk is not None and blk.present and blk.large_folio:
                raise ModelError(f"UFFDIO_MOVE of the PTE-mapped large folio at {block(src)[0]:#x} is not modelled")
            wants.append(Want(Event.CLEAR, src, src + PAGE, "UFFDIO_MOVE of a 4 KiB page: move_pages_pte"))
            step = PAGE
        aspace.populated_pmds.add(block(to)[0])
        src, to = src + step, to + step
    aspace.vmas.append(Vma(dst, dst_end, "rw", False))
    aspace.vmas.sort(key=lambda v: v.start)
    aspace.make_old(op.start, op.end)
    aspace.access(dst, dst_end)
    got = {k: op.extra[k] for k in ("moved", "src_present", "dst_bad", "dst_huge_kb")}
    expected = {"moved": op.end - op.start, "src_present": 0, "dst_bad": 0, "dst_huge_kb": 2048 * moved_thps}

    def reported(records: Sequence[Record]) -> list[Finding]:
        if op.errno:
            return [_finding("uffd-move", op, f"UFFDIO_MOVE failed with errno {op.errno}", None, records,
                             expected="errno 0")]
        return [] if got == expected else [
            _finding("uffd-move", op, f"after the move: {got}", None, records,
                     expected=f"{expected}: every page moved with its data")]

    return windows_then(op, wants, f, reported)


register("pmscan", expect_pmscan, ints=("ret", "walk_end"))
register("uffd-wpscan", expect_wpscan, ints=("stride", "written", "scan1", "regions", "walk_end"))
register("uffd-move", expect_move, ints=("dst", "dst_end", "moved", "src_present", "dst_bad", "dst_huge_kb"))
for _site in ("do_pagemap_scan", "move_pages_pte", "move_pages_huge_pmd", "change_pud_range"):
    register_judged(_site, SCENARIO)
