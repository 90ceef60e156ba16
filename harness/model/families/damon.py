"""DAMON monitoring the workload (guest/workloads/mmops-damon.c; docs/young.md).

Two kdamonds: one monitors the workload's virtual addresses, one the physical frames of some of
its pages.  Each samples one address per region each sample interval (mm/damon/vaddr.c and
paddr.c, 6.12; DAMON is off in Debian's 6.1 cloud config).  Virtual addresses:
  * prepare: damon_va_mkold -> walk_page_range(mm, addr, addr + 1) -> damon_mkold_pmd_entry ->
    damon_ptep_mkold (a PTE) or damon_pmdp_mkold (a huge PMD) -> ptep/pmdp_clear_young_notify:
    clear_young(addr, addr + 4 KiB or 2 MiB), when the folio is on an LRU list.
  * check, the next sample: damon_va_young -> damon_young_pmd_entry: test_young(addr) when the
    entry is still old and the folio still idle (the primary's answer decides otherwise).
Physical addresses: damon_pa_mkold -> an rmap walk of the folio at the sampled frame ->
damon_folio_mkold_one -> damon_ptep_mkold / damon_pmdp_mkold at the address the walk found (a
page's, or a huge PMD's, start), and damon_pa_young -> damon_folio_young_one -> test_young(addr),
under the same conditions.
In vaddr, `addr` is the region's sampling address, damon_rand(start, end): any byte, not a page boundary.
The wrappers pass it on as it is, so DAMON's clear_young ranges start mid-page and span the next
page (or the next 2 MiB): the kernel's behaviour, which the contract's page-aligned range rule
would call a finding; explained_unaligned() sets exactly those apart.  kdamond opens no window
(vaddr monitoring changes no mapping; no DAMOS scheme is installed) and never flushes.
"""

from __future__ import annotations

from typing import Optional, Sequence

from harness.events import Callback, Record
from harness.model.callsites import register_judged
from harness.model.contract import Pair
from harness.model.expect import Expectation, register_expectation
from harness.model.findings import Finding, window_around
from harness.model.ops import HPAGE, PAGE, AddressSpace, ModelError, Op, block, register_op
from harness.model.versions import Features

SCENARIO = "damon"

register_op("damon", ints=("kdamond_pid", "kdamond_pa_pid", "regions", "frames", "sample_us"), ranged=False)
# expect_damon: clear_young at each sampling address, its size by the mapping there; test_young
# only at an address the same run made old.
register_judged("damon_ptep_mkold", SCENARIO)
register_judged("damon_pmdp_mkold", SCENARIO)
register_judged("damon_young_pmd_entry", SCENARIO)
register_judged("damon_folio_young_one", SCENARIO)


def _finding(op: Op, message: str, rec: Optional[Record], records: Sequence[Record], expected: str = "") -> Finding:
    return Finding(rule="damon", op=op.describe(), message=message, expected=expected,
                   observed=rec.describe() if rec else "", window=window_around(records, rec.seq) if rec else ())


def entry_size(addr: int, aspace: AddressSpace) -> int:
    """What DAMON's walk finds at `addr`: a huge PMD where the model has a PMD-mapped THP, else a PTE."""
    blk = aspace.blocks.get(block(addr)[0])
    return HPAGE if blk is not None and blk.pmd_mapped and blk.present else PAGE


def expect_damon(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    kdamond, kdamond_pa = op.extra["kdamond_pid"], op.extra["kdamond_pa_pid"]
    if kdamond <= 0 or kdamond_pa <= 0:
        raise ModelError("damon: no kdamond pid")
    sizes = {entry_size(v.start, aspace) for v in aspace.vmas}

    def check(pairs: list[Pair], own: list[Record], records: Sequence[Record]) -> list[Finding]:
        findings = [_finding(op, f"kdamond opened a window {p.describe()}: monitoring changes no mapping",
                             p.start, records, expected="no window") for p in pairs]
        findings += _sampling(op, aspace, own, records, aligned=False, sizes=sizes, what="vaddr kdamond")
        pa = [r for r in records if r.pid == kdamond_pa and op.t0 <= r.time_ns <= op.t1]
        findings += [_finding(op, f"the paddr kdamond opened a window ({r.describe()})", r, records)
                     for r in pa if r.callback == Callback.START]
        if op.extra["frames"]:
            findings += _sampling(op, aspace, pa, records, aligned=True, sizes=set(), what="paddr kdamond")
        return findings

    return Expectation(op, pid=kdamond, check=check)


def _sampling(op: Op, aspace: AddressSpace, own: Sequence[Record], records: Sequence[Record], *, aligned: bool,
              sizes: set[int], what: str) -> list[Finding]:
    """One kdamond's young callbacks: clear_young over the entry at each sampled address (at the
    entry's start when the address came from an rmap walk, `aligned`), test_young only where it made
    a page old, never clear_flush_young; a clear_young of each entry size in `sizes` and a
    test_young seen at least once."""
    findings: list[Finding] = []
    made_old: set[int] = set()
    cleared: dict[int, int] = {}
    tested = 0
    for r in own:
        if r.callback == Callback.CLEAR_YOUNG:
            if aspace.vma_at(r.start) is None:
                findings.append(_finding(op, f"{what}: clear_young at {r.start:#x}, outside the workload's "
                                         f"mappings", r, records))
                continue
            size = entry_size(r.start, aspace)
            if r.end - r.start != size or (aligned and r.start % size):
                entry = "pmd" if size == HPAGE else "pte"
                where = "the entry" if aligned else "the sampled address"
                findings.append(_finding(op, f"{what}: clear_young [{r.start:#x}, {r.end:#x}) where DAMON's walk "
                                         f"finds a {entry.upper()}", r, records,
                                         expected=f"{size >> 10} KiB from {where} (damon_{entry}p_mkold)"))
                continue
            made_old.add(r.start)
            cleared[size] = cleared.get(size, 0) + 1
        elif r.callback == Callback.TEST_YOUNG:
            tested += 1
            if r.start not in made_old:
                findings.append(_finding(op, f"{what}: test_young at {r.start:#x}, which it never made old: DAMON "
                                         f"checks the address it sampled", r, records,
                                         expected="a clear_young at the same address before it"))
        elif r.callback == Callback.CLEAR_FLUSH_YOUNG:
            findings.append(_finding(op, f"{what}: clear_flush_young: DAMON only clears young bits without a "
                                     f"flush", r, records))
    never = [("huge PMD (damon_pmdp_mkold)" if size == HPAGE else "PTE (damon_ptep_mkold)")
             for size in sorted(sizes) if not cleared.get(size)] if sizes else ([] if cleared else ["page"])
    for entry in never:
        findings.append(_finding(op, f"{what} never made a {entry} of the workload old", None, records,
                                 expected=f"clear_young while it sampled for {(op.t1 - op.t0) // 1000000} ms"))
    if not tested:
        findings.append(_finding(op, f"{what} never asked test_young of a page it had made old", None, records,
                                 expected="test_young at sampled addresses left unread"))
    return findings


def explained_unaligned(findings: Sequence[Finding], records: Sequence[Record],
                        kdamond: int) -> tuple[list[Finding], int]:
    """The contract's findings without those its range rule made of kdamond's clear_young at a
    sampling address (see the module's docstring); and how many were set apart."""
    damon = {r.describe() for r in records
             if r.pid == kdamond and r.callback == Callback.CLEAR_YOUNG and r.end - r.start in (PAGE, HPAGE)}
    kept = [f for f in findings if not (f.rule == "range" and f.observed in damon)]
    return kept, len(findings) - len(kept)


register_expectation("damon", expect_damon)
