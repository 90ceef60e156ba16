"""MADV_FREE, the reclaim that discards lazily freed pages, and MADV_PAGEOUT (guest/workloads/
mmops-madvfree.c; docs/madv-free.md has the kernel functions, read from 6.1 and 6.12).

  free         madvise_free_single_vma: one CLEAR per VMA over its part of the range, blockable,
               invalidate_range inside on 6.1 (a plain mmu_notifier_invalidate_range_end).  The
               PTEs are made old and clean inside it, with no young callback.  A PMD-mapped THP the
               range covers whole stays PMD-mapped (madvise_free_huge_pmd); one it covers in part
               is split first (split_huge_page: split_huge_pmd_address's 2 MiB CLEAR, then
               try_to_migrate_one's CLEAR, both nested in the outer window).
  freereclaim  memory.reclaim of the workload's own memcg, with no swap: a lazily freed page whose
               PTE is still clean is discarded by try_to_unmap_one under a 4 KiB CLEAR (with
               invalidate_range of the page inside on 6.1: the explicit one before `goto discard`,
               and the end's), after shrink_folio_list checked its references (a young callback
               on it first).  Only lazily freed pages can go: there is nowhere else to put them.
  pageout      MADV_PAGEOUT with swap: reclaim_pages() in the caller's task, try_to_unmap_one's
               4 KiB CLEAR for each page it swaps out.  6.1 checks references first
               (clear_flush_young on each page: shrink_folio_list with ignore_references false);
               6.12 ignores references and calls no young callback.
"""

from __future__ import annotations

from typing import Optional, Sequence

from harness.events import Callback, Event, Record
from harness.model.callsites import register_judged
from harness.model.contract import Pair
from harness.model.expect import Expectation, Want, _finding, _ir, _split_want
from harness.model.families._common import family_state, register
from harness.model.findings import Finding
from harness.model.ops import HPAGE, PAGE, AddressSpace, ModelError, Op, block
from harness.model.versions import Features

WORDS = 8          # the guest's page bitmaps: 8 words of 64 pages, 2 MiB
SCENARIOS = ("madv-free", "madv-pageout")
YOUNG_CALLBACKS = (Callback.CLEAR_FLUSH_YOUNG, Callback.CLEAR_YOUNG)


def lazy_pages(aspace: AddressSpace) -> set[int]:
    """The pages MADV_FREE has freed and nothing has discarded yet."""
    return family_state(aspace, "madv-free", set[int])


def bitmap_pages(op: Op, key: str) -> list[int]:
    """The pages a bitmap of the guest names: bit i of `key`_(i // 64) is page i of [op.start, ...)."""
    pages = []
    for w in range(WORDS):
        bits = op.extra[f"{key}_{w}"]
        for i in range(64):
            if bits >> i & 1:
                page = op.start + (w * 64 + i) * PAGE
                if page >= op.end:
                    raise ModelError(f"{op.kind}: bit {w * 64 + i} of {key} names a page past the range's end")
                pages.append(page)
    return pages


def expect_free(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    exp = Expectation(op)
    for vma in aspace.overlapping(op.start, op.end):
        s, e = max(op.start, vma.start), min(op.end, vma.end)
        nested = []
        for b0 in range(block(s)[0], e, HPAGE):
            blk = aspace.blocks.get(b0)
            if blk is None or not blk.present or not blk.large_folio:
                continue
            if not blk.pmd_mapped:
                raise ModelError(f"MADV_FREE over the PTE-mapped large folio at {b0:#x} (split_folio from the "
                                 f"PTE walk) is not modelled")
            if s <= b0 and b0 + HPAGE <= e:
                continue     # madvise_free_huge_pmd: the whole PMD made old and clean, the folio lazy
            # madvise_free_huge_pmd on part of a PMD: split_huge_page -> unmap_folio -> try_to_migrate
            # (TTU_SPLIT_HUGE_PMD) for the one VMA mapping it.
            ms, me = max(b0, vma.start), min(b0 + HPAGE, vma.end)
            nested.append(_split_want((b0, b0 + HPAGE), "MADV_FREE of part of a PMD-mapped THP: "
                                      "split_huge_page, split_huge_pmd_address(freeze)"))
            nested.append(Want(Event.CLEAR, ms, me, "MADV_FREE of part of a THP: split_huge_page, try_to_migrate_one",
                               invalidate_range=_ir(f, ms, me)))
            blk.pmd_mapped = blk.large_folio = False
        exp.wants.append(Want(Event.CLEAR, s, e, "MADV_FREE: CLEAR per VMA, madvise_free_single_vma",
                              nested=tuple(nested), invalidate_range=_ir(f, s, e)))
        lazy_pages(aspace).update(range(s, e, PAGE))
    aspace.make_old(op.start, op.end)     # pte_mkold/pmd_mkold: no callback
    return exp


def _young_check(own: Sequence[Record], records: Sequence[Record], op: Op, allowed: tuple[Callback, ...],
                 why: str) -> tuple[list[Finding], dict[int, Record]]:
    """Young callbacks during a reclaim: only `allowed` ones, each on one page or one PMD; which page
    each first aged (its record)."""
    findings: list[Finding] = []
    aged: dict[int, Record] = {}
    for r in own:
        if r.callback == Callback.TEST_YOUNG or (r.callback in YOUNG_CALLBACKS and r.callback not in allowed):
            findings.append(_finding("aging", op, f"{r.callback.name.lower()} during {op.kind}: {why}", r, records,
                                     expected=" or ".join(c.name.lower() for c in allowed) or "no young callback"))
        elif r.callback in allowed:
            size = r.end - r.start
            if not ((size == PAGE and r.start % PAGE == 0) or (size == HPAGE and r.start % HPAGE == 0)):
                findings.append(_finding("aging", op, f"{r.callback.name.lower()} [{r.start:#x}, {r.end:#x}) is "
                                         f"neither one page nor one PMD", r, records))
                continue
            for p in range(r.start, r.end, PAGE):
                aged.setdefault(p, r)
    return findings, aged


def _unmapped(op: Op, pairs: Sequence[Pair], pages: Sequence[int], aged: Optional[dict[int, Record]],
              records: Sequence[Record], f: Features, what: str) -> list[Finding]:
    """Each of `pages` left under a 4 KiB CLEAR of its own (try_to_unmap_one), with 6.1's
    invalidate_range of the page inside, after a young callback on it when `aged` is given."""
    findings: list[Finding] = []
    windows = {p.range[0]: p for p in pairs if p.event == Event.CLEAR and p.range[1] - p.range[0] == PAGE}
    for page in pages:
        pair = windows.get(page)
        if pair is None:
            findings.append(_finding("reclaim", op, f"page {page:#x} was {what} without a 4 KiB CLEAR window "
                                     f"(try_to_unmap_one)", None, records,
                                     expected=f"CLEAR [{page:#x}, {page + PAGE:#x})"))
            continue
        if f.invalidate_range and not any(r.callback == Callback.INVALIDATE_RANGE and (r.start, r.end) ==
                                           (page, page + PAGE) for r in pair.inner):
            findings.append(_finding("invalidate-range", op, f"no invalidate_range [{page:#x}, {page + PAGE:#x}) "
                                     f"inside {pair.describe()}: try_to_unmap_one calls it after clearing the "
                                     f"PTE on {f.label}", pair.start, records))
        if aged is not None and (page not in aged or aged[page].seq > pair.start.seq):
            findings.append(_finding("aging", op, f"page {page:#x} was {what} ({pair.describe()}) before any "
                                     f"young callback on it: shrink_folio_list checks references first",
                                     pair.start, records))
    return findings


def expect_freereclaim(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    gone = bitmap_pages(op, "gone")
    lazy = set(lazy_pages(aspace))
    mglru = op.lru_gen > 0 and bool(op.lru_gen & 1)
    # folio_referenced_one: clear_flush_young, or on 6.12 with MGLRU lru_gen_look_around's clear_young
    # (and MGLRU's page table walk may age any PTE of the workload the same way).
    aging = Callback.CLEAR_YOUNG if mglru and f.mglru_clear_young else Callback.CLEAR_FLUSH_YOUNG

    def check(pairs: list[Pair], own: list[Record], records: Sequence[Record]) -> list[Finding]:
        findings, aged = _young_check(own, records, op, (aging,), f"lru_gen/enabled {op.lru_gen:#x} on {f.label}: "
                                      f"folio_referenced_one calls {aging.name.lower()}")
        for pair in pairs:
            s, e = pair.range
            if pair.event != Event.CLEAR or e - s != PAGE or s % PAGE:
                findings.append(_finding("unexpected", op, f"unexpected window {pair.describe()} during reclaim",
                                         pair.start, records, expected="4 KiB CLEARs from try_to_unmap_one"))
            elif op.start <= s < op.end and s not in lazy:
                findings.append(_finding("unexpected", op, f"{pair.describe()} unmaps a page MADV_FREE never "
                                         f"freed, with no swap to put it in", pair.start, records))
        for page in gone:
            if page not in lazy:
                findings.append(_finding("reclaim", op, f"page {page:#x} was discarded but MADV_FREE never freed it: "
                                         f"its data is lost", None, records))
        findings += _unmapped(op, pairs, [p for p in gone if p in lazy], aged, records, f, "discarded")
        if not gone:
            findings.append(_finding("reclaim", op, f"memory.reclaim discarded no lazily freed page (errno "
                                     f"{op.errno}, {op.extra['present']} pages present): the scenario "
                                     f"saw no lazy-free reclaim", None, records))
        return findings

    lazy_pages(aspace).difference_update(gone)
    return Expectation(op, check=check)


def expect_pageout(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    young = sorted(p for p in aspace.young if op.start <= p < op.end)
    if f.pageout_checks_references and young:
        raise ModelError(f"MADV_PAGEOUT over {len(young)} young PTEs on {f.label}: it makes them old under an "
                         f"mmu_gather with no window, and the contract accepts that flush only from MADV_COLD "
                         f"(make the range old first: cold)")
    for b0, blk in aspace.blocks.items():
        if blk.present and blk.large_folio and b0 < op.end and op.start < b0 + HPAGE:
            raise ModelError(f"MADV_PAGEOUT over the THP at {b0:#x} is not modelled")
    swapped = bitmap_pages(op, "swapped")
    allowed = (Callback.CLEAR_FLUSH_YOUNG,) if f.pageout_checks_references else ()
    why = (f"reclaim_pages checks references on {f.label}: folio_referenced_one calls clear_flush_young"
           if allowed else f"reclaim_pages ignores references on {f.label}: no young callback")

    def check(pairs: list[Pair], own: list[Record], records: Sequence[Record]) -> list[Finding]:
        findings, aged = _young_check(own, records, op, allowed, why)
        seen: set[int] = set()
        for pair in pairs:
            s, e = pair.range
            if pair.event != Event.CLEAR or e - s != PAGE or not op.start <= s < op.end:
                findings.append(_finding("unexpected", op, f"unexpected window {pair.describe()} during MADV_PAGEOUT",
                                         pair.start, records, expected="4 KiB CLEARs of the range's pages"))
            elif s in seen:
                findings.append(_finding("unexpected", op, f"a second window on page {s:#x}: {pair.describe()}",
                                         pair.start, records, expected="one try_to_unmap_one per page"))
            seen.add(s)
        findings += _unmapped(op, pairs, swapped, aged if allowed else None, records, f, "swapped out")
        if not swapped:
            findings.append(_finding("reclaim", op, "MADV_PAGEOUT swapped out no page of the range", None, records))
        return findings

    if f.pageout_checks_references:
        aspace.make_old(op.start, op.end)
    return Expectation(op, check=check)


register("free", expect_free)
register("freereclaim", expect_freereclaim, ints=("present", "swapped", *(f"gone_{w}" for w in range(WORDS))))
register("pageout", expect_pageout, ints=tuple(f"swapped_{w}" for w in range(WORDS)))
register_judged("madvise_free_single_vma", "madv-free")
register_judged("try_to_unmap_one", *SCENARIOS)
register_judged("__split_huge_pmd", "madv-free")
register_judged("try_to_migrate_one", "madv-free")
register_judged("folio_referenced_one", *SCENARIOS)
register_judged("lru_gen_look_around", "madv-free")
