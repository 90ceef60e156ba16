"""/proc/PID/clear_refs (guest/workloads/mmops-clearrefs.c; docs/clear-refs.md has the kernel
functions, read from 6.1 and 6.12: fs/proc/task_mmu.c, the same logic in both).

  clearrefs:4  clear_refs_write: one SOFT_DIRTY window over the whole address space, [0, -1UL),
               blockable, around the page table walk that write-protects every PTE and clears its
               soft-dirty bit (clear_soft_dirty, clear_soft_dirty_pmd: no callback); 6.1's plain
               mmu_notifier_invalidate_range_end calls invalidate_range [0, -1UL) inside.  A write
               to such a page afterwards is a write-protect fault that reuses the exclusive page
               (wp_page_reuse): no window, and the page is soft-dirty again.
  clearrefs:1-3 the walk clears accessed bits with ptep_test_and_clear_young and
               pmdp_test_and_clear_young, the primitives that do not notify: no window and no
               young callback at all.  Secondary MMUs keep their own accessed bits.  That is the
               kernel's design, not a finding.
  clearrefs:5  reset_mm_hiwater_rss only: nothing.
  softdirty    pagemap reports a page soft-dirty when its VMA has VM_SOFTDIRTY (mmap_region sets it
               on every new VMA, clear_refs 4 clears it) or its PTE was made dirty since clear_refs 4
               (pte_mkdirty sets the soft-dirty bit on x86): before any clearrefs:4 every page of a
               mapping, after one exactly the pages written since, and every page of a VMA made since.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from harness.events import Callback, Event, Record
from harness.model.callsites import register_judged
from harness.model.contract import WHOLE_SPACE, Pair
from harness.model.expect import Expectation, Want, _finding, _ir, _match
from harness.model.families._common import family_state, register, windows_then
from harness.model.findings import Finding
from harness.model.ops import PAGE, AddressSpace, ModelError, Op
from harness.model.versions import Features

SCENARIO = "clear-refs"
SOFT_DIRTY, ALL, ANON, MAPPED, HIWATER = 4, 1, 2, 3, 5
YOUNG = (Callback.CLEAR_FLUSH_YOUNG, Callback.CLEAR_YOUNG, Callback.TEST_YOUNG)
WHY = {ALL: "accessed bits of every VMA", ANON: "accessed bits of anonymous VMAs",
       MAPPED: "accessed bits of file VMAs", HIWATER: "the peak RSS"}
WORD = 64          # softdirty reports a mapping of at most one 64-bit word of pages


@dataclass
class SoftDirty:
    # The ranges of the workload's VMAs when clear_refs 4 last cleared VM_SOFTDIRTY; None before.
    cleared: Optional[list[tuple[int, int]]] = None


def expect_clearrefs(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    kind = op.extra["type"]
    if kind not in (SOFT_DIRTY, *WHY):
        raise ModelError(f"clear_refs type {kind} is not one the kernel accepts (1..5)")
    wants = []
    if kind == SOFT_DIRTY:
        wants.append(Want(Event.SOFT_DIRTY, *WHOLE_SPACE, "clear_refs 4: clear_refs_write over the whole address "
                          "space", invalidate_range=_ir(f, *WHOLE_SPACE)))
        family_state(aspace, "clear-refs", SoftDirty).cleared = [(v.start, v.end) for v in aspace.vmas]
    if kind in (ALL, ANON):
        for vma in aspace.vmas:          # the workload's mappings are all anonymous
            aspace.make_old(vma.start, vma.end)

    def check(pairs: list[Pair], own: list[Record], records: Sequence[Record]) -> list[Finding]:
        findings = _match(pairs, wants, (), op.describe(), records, f)
        for r in own:
            if r.callback in YOUNG:
                findings.append(_finding("clear-refs", op, f"{r.callback.name.lower()} from clear_refs {kind}: "
                                         f"clear_refs_pte_range ages with ptep_test_and_clear_young, which tells no "
                                         f"secondary MMU", r, records, expected="no young callback"))
        return findings

    return Expectation(op, check=check)


def expect_softdirty(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """Reading pagemap: no window.  Soft-dirty: the pages written since clear_refs 4 (`written`, the
    workload's record of its own writes) and every page no clear_refs 4 has met (VM_SOFTDIRTY)."""
    n = (op.end - op.start) // PAGE
    if n > WORD:
        raise ModelError(f"{op.describe()}: softdirty reports at most {WORD} pages")
    cleared = family_state(aspace, "clear-refs", SoftDirty).cleared
    unmet = sum(1 << i for i in range(n) if not any(s <= op.start + i * PAGE < e for s, e in cleared or ()))
    dirty, expected = op.extra["dirty"], op.extra["written"] | unmet
    why = ("no clear_refs 4 has run: every page of a new VMA is soft-dirty (VM_SOFTDIRTY)" if cleared is None
           else "the soft-dirty pages are not the pages written since clear_refs 4"
           + (" and those of the VMAs made since (VM_SOFTDIRTY)" if unmet else ""))

    def pages(bits: int) -> str:
        return ", ".join(f"{op.start + i * PAGE:#x}" for i in range(WORD) if bits >> i & 1) or "none"

    def reported(records: Sequence[Record]) -> list[Finding]:
        return [] if dirty == expected else [
            _finding("soft-dirty", op, why, None, records, expected=f"soft-dirty: {pages(expected)}",
                     observed=f"soft-dirty: {pages(dirty)}")]

    return windows_then(op, [], f, reported)


register("clearrefs", expect_clearrefs, ints=("type",), ranged=False)
register("softdirty", expect_softdirty, ints=("dirty", "written"))
register_judged("clear_refs_write", SCENARIO)
