"""MADV_COLLAPSE of shmem (memfd) and anonymous ranges (guest/workloads/mmops-collapse.c;
docs/collapse.md has the kernel functions, read from 6.1 and 6.12).

  shmap     a memfd mapped shared or private, its pages faulted small: no window.
  collapse  madvise_collapse, per 2 MiB block of the range, in the caller's task:
    anonymous  hpage_collapse_scan_pmd -> collapse_huge_page: one CLEAR over the block (6.1: with
               invalidate_range inside, a plain end); never test_young (only khugepaged asks).
    shmem      hpage_collapse_scan_file -> collapse_file, while the page cache holds small pages:
               each mapped page is unmapped by try_to_unmap: try_to_unmap_one opens a 4 KiB CLEAR in
               every VMA of the file the rmap walk visits (i_mmap order: by pgoff, then by creation)
               until the page is mapped nowhere (6.1: invalidate_range inside).  Then the page
               tables that mapped the block are retracted:
                 6.1   retract_page_tables: the caller's own mapping only (others are left to
                       khugepaged), and only without an anon_vma: collapse_and_free_pmd's 2 MiB CLEAR
                       (invalidate_range inside), then the huge PMD (set_huge_pmd, no window).  With
                       an anon_vma the result is SCAN_PAGE_ANON: MADV_COLLAPSE stops, EINVAL, the
                       page cache already huge.
                 6.12  retract_page_tables: every mapping of the file without an anon_vma whose PMD
                       holds a page table, each under its own 2 MiB CLEAR; then (SCAN_PTE_MAPPED_HUGEPAGE)
                       collapse_pte_mapped_thp for the caller's.
               With the page cache's block already one huge folio: SCAN_PTE_MAPPED_HUGEPAGE at once.
               collapse_pte_mapped_thp (install_pmd): nothing if the PMD is huge already, the huge PMD
               without a window if it is none; otherwise, if every PTE left maps the folio's own page,
               a 2 MiB CLEAR (6.1: collapse_and_free_pmd's; 6.12: its own) and the huge PMD; a PTE
               mapping another page (a private copy) aborts it with no window: EINVAL.
"""

from __future__ import annotations

import errno as errnos
from dataclasses import dataclass, field
from typing import Optional, Sequence

from harness.events import Event, Record
from harness.model.callsites import register_judged
from harness.model.expect import Expectation, Want, _finding, _ir
from harness.model.families._common import family_state, register, windows_then
from harness.model.findings import Finding
from harness.model.ops import HPAGE, PAGE, AddressSpace, Block, ModelError, Op, Vma
from harness.model.versions import Features

SCENARIO = "shmem-collapse"
PER_BLOCK = HPAGE // PAGE

# The enum scan_result values the model meets (mm/khugepaged.c).
SUCCEED, PMD_MAPPED, PAGE_ANON, FAIL = "SCAN_SUCCEED", "SCAN_PMD_MAPPED", "SCAN_PAGE_ANON", "SCAN_FAIL"
DONE = (SUCCEED, PMD_MAPPED)


@dataclass
class Shmap:
    """One mapping of a memfd, as the model follows it."""

    name: str
    start: int
    end: int
    file: int
    shared: bool
    anon_vma: bool
    mapped: set[int] = field(default_factory=set)      # file pages whose page cache page is PTE-mapped here
    private: set[int] = field(default_factory=set)     # file pages mapped here by a private copy
    pmd: dict[int, str] = field(default_factory=dict)  # per file block: "table", "none" or "huge"

    def addr(self, page: int) -> int:
        return self.start + page * PAGE

    def blocks(self) -> range:
        return range((self.end - self.start) // HPAGE)


@dataclass
class Files:
    mappings: list[Shmap] = field(default_factory=list)   # creation order: i_mmap order at pgoff 0
    huge: set[tuple[int, int]] = field(default_factory=set)   # (file, block): one 2 MiB folio in the page cache

    def of_file(self, file: int) -> list[Shmap]:
        return [m for m in self.mappings if m.file == file]

    def by_name(self, name: str) -> Optional[Shmap]:
        return next((m for m in self.mappings if m.name == name), None)


def files(aspace: AddressSpace) -> Files:
    """The memfd mappings of this address space."""
    return family_state(aspace, "collapse", Files)


def expect_shmap(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    fs = files(aspace)
    if op.start % HPAGE or (op.end - op.start) % HPAGE:
        raise ModelError("shmap maps whole 2 MiB blocks at a 2 MiB-aligned address; the model assumes it")
    shared = bool(op.extra["shared"])
    anon_page = op.extra["anon_page"]
    m = Shmap(op.name, op.start, op.end, op.extra["file"], shared, anon_vma=bool(anon_page))
    pages = (op.end - op.start) // PAGE
    m.mapped = set(range(pages))
    if anon_page:
        private = (anon_page - op.start) // PAGE
        m.mapped.discard(private)
        m.private.add(private)
    m.pmd = {b: "table" for b in m.blocks()}
    fs.mappings.append(m)
    aspace.vmas.append(Vma(op.start, op.end, "rw", False))
    aspace.vmas.sort(key=lambda v: v.start)
    aspace.populated_pmds.update(range(op.start, op.end, HPAGE))
    return Expectation(op)      # faults only: no window


def _unmap_block(fs: Files, m: Shmap, blk: int, f: Features, wants: list[Want]) -> None:
    """collapse_file: try_to_unmap of each mapped small page of the block, in file order."""
    holders = fs.of_file(m.file)
    for page in range(blk * PER_BLOCK, (blk + 1) * PER_BLOCK):
        left = sum(page in v.mapped for v in holders)
        for v in holders:       # rmap_walk_file, stopped by folio_not_mapped
            if not left:
                break
            a = v.addr(page)
            wants.append(Want(Event.CLEAR, a, a + PAGE, "collapse_file: try_to_unmap_one",
                              invalidate_range=_ir(f, a, a + PAGE)))
            if page in v.mapped:
                v.mapped.discard(page)
                left -= 1


def _retract_61(fs: Files, m: Shmap, blk: int, f: Features, wants: list[Want]) -> str:
    """6.1 retract_page_tables with MADV_COLLAPSE's collapse_control: the result for the caller's mapping."""
    target = FAIL
    for v in fs.of_file(m.file):
        if v.anon_vma:
            result = PAGE_ANON
        elif v.pmd[blk] != "table":
            result = PMD_MAPPED if v.pmd[blk] == "huge" else "SCAN_PMD_NONE"
        elif v is m:
            b = v.addr(blk * PER_BLOCK)
            wants.append(Want(Event.CLEAR, b, b + HPAGE, "retract_page_tables: collapse_and_free_pmd",
                              invalidate_range=_ir(f, b, b + HPAGE)))
            v.pmd[blk] = "huge"      # set_huge_pmd
            result = SUCCEED
        else:
            continue                 # not the caller's: khugepaged_add_pte_mapped_thp, no window now
        if v is m:
            target = result
    return target


def _retract_612(fs: Files, m: Shmap, blk: int, wants: list[Want]) -> None:
    """6.12 retract_page_tables: every mapping without an anon_vma whose PMD holds a page table."""
    for v in fs.of_file(m.file):
        if v.anon_vma or v.pmd[blk] != "table":
            continue
        b = v.addr(blk * PER_BLOCK)
        wants.append(Want(Event.CLEAR, b, b + HPAGE, "retract_page_tables"))
        v.pmd[blk] = "none"


def _pte_mapped_thp(m: Shmap, blk: int, f: Features, wants: list[Want]) -> str:
    """collapse_pte_mapped_thp(mm, addr, install_pmd=true) for the caller's mapping."""
    if m.pmd[blk] == "huge":
        return PMD_MAPPED
    if m.pmd[blk] == "table":
        pages = range(blk * PER_BLOCK, (blk + 1) * PER_BLOCK)
        if any(p in m.private for p in pages):
            return FAIL              # step 1: a PTE maps another page than the folio's: abort, no window
        b = m.addr(blk * PER_BLOCK)
        why = "collapse_pte_mapped_thp" + ("" if f.collapse_retracts_all else ": collapse_and_free_pmd")
        wants.append(Want(Event.CLEAR, b, b + HPAGE, why, invalidate_range=_ir(f, b, b + HPAGE)))
        m.mapped.difference_update(pages)
    m.pmd[blk] = "huge"              # set_huge_pmd (a PMD that was none: no window)
    return SUCCEED


def _collapse_block(fs: Files, m: Shmap, blk: int, f: Features, wants: list[Want]) -> str:
    """One block's scan result.  SCAN_PTE_MAPPED_HUGEPAGE, from hpage_collapse_scan_file meeting the
    huge folio or (6.12) from collapse_file, sends MADV_COLLAPSE on to collapse_pte_mapped_thp."""
    if (m.file, blk) not in fs.huge:
        _unmap_block(fs, m, blk, f, wants)
        fs.huge.add((m.file, blk))
        if not f.collapse_retracts_all:
            return _retract_61(fs, m, blk, f, wants)
        _retract_612(fs, m, blk, wants)
    return _pte_mapped_thp(m, blk, f, wants)


def _errno(result: str) -> int:
    """madvise_collapse_errno for the results the model meets."""
    return 0 if result in DONE else errnos.EINVAL


def _expect_shmem(op: Op, m: Shmap, fs: Files, f: Features) -> tuple[list[Want], int, int]:
    """(windows, errno, ShmemPmdMapped kB of the mapping afterwards)."""
    wants: list[Want] = []
    result = SUCCEED
    first = (op.start - m.start + HPAGE - 1) // HPAGE
    last = (op.end - m.start) // HPAGE
    for blk in range(first, last):
        result = _collapse_block(fs, m, blk, f, wants)
        if result not in DONE:
            break                    # neither done nor one of madvise_collapse's continuable results
    pmd_kb = sum(2048 for blk in m.blocks() if m.pmd[blk] == "huge")
    return wants, _errno(result), pmd_kb


def _expect_anon(op: Op, aspace: AddressSpace, f: Features) -> tuple[list[Want], int]:
    """MADV_HUGEPAGE over the whole mapping, then collapse_huge_page of each block not yet PMD-mapped."""
    vmas = aspace.overlapping(op.start, op.end)
    if len(vmas) != 1 or not (vmas[0].start <= op.start and op.end <= vmas[0].end):
        raise ModelError("collapse of an anonymous range inside one VMA is modelled, not across VMAs")
    vma = vmas[0]
    aspace.vmas[aspace.vmas.index(vma)] = Vma(vma.start, vma.end, vma.prot, True)
    wants: list[Want] = []
    for b in range((op.start + HPAGE - 1) // HPAGE * HPAGE, op.end // HPAGE * HPAGE, HPAGE):
        blk = aspace.blocks.get(b)
        if blk is not None and blk.pmd_mapped:
            continue                 # SCAN_PMD_MAPPED
        if blk is not None and blk.large_folio:
            raise ModelError(f"collapse of the PTE-mapped large folio at {b:#x} is not modelled")
        wants.append(Want(Event.CLEAR, b, b + HPAGE, "MADV_COLLAPSE: collapse_huge_page",
                          invalidate_range=_ir(f, b, b + HPAGE)))
        aspace.blocks[b] = Block()
        aspace.populated_pmds.add(b)
    return wants, 0


def expect_collapse(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    fs = files(aspace)
    m = fs.by_name(op.name)
    pmd_kb: Optional[int] = None
    if m is None:
        wants, want_errno = _expect_anon(op, aspace, f)
    else:
        wants, want_errno, pmd_kb = _expect_shmem(op, m, fs, f)

    def reported(records: Sequence[Record]) -> list[Finding]:
        findings: list[Finding] = []
        if op.errno != want_errno:
            findings.append(_finding("collapse", op, f"MADV_COLLAPSE returned errno {op.errno}", None, records,
                                     expected=f"errno {want_errno}"))
        got = op.extra["shmem_pmd_kb"]
        if pmd_kb is not None and got != pmd_kb:
            findings.append(_finding("thp-state", op, f"the mapping has {got} kB of PMD-mapped shmem afterwards",
                                     None, records, expected=f"ShmemPmdMapped {pmd_kb} kB"))
        return findings

    return windows_then(op, wants, f, reported)


register("shmap", expect_shmap, ints=("shared", "file", "anon_page"))
register("collapse", expect_collapse, ints=("shmem_pmd_kb",))
for _site in ("collapse_and_free_pmd", "retract_page_tables", "collapse_pte_mapped_thp", "collapse_huge_page",
              "try_to_unmap_one"):
    register_judged(_site, SCENARIO)
