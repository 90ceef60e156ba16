"""A uprobe on the workload's own text (guest/workloads/mmops-uprobe.c; docs/uprobe.md has the
kernel functions, read from 6.1 and 6.12).

  uprobe-on   enabling the event: uprobe_register -> register_for_each_vma -> install_breakpoint ->
              set_swbp -> uprobe_write_opcode, in the enabling task, for each mm mapping the file.
              __replace_page swaps the file's page for an anonymous copy holding int3: one CLEAR
              window of one page, blockable.  On 6.1 it holds invalidate_range of the page
              (ptep_clear_flush_notify), then change_pte at the probed address (set_pte_at_notify
              with the copy), and the end's invalidate_range; 6.12 has neither callback.  The window
              starts at the probed address itself before 6.8 (uprobe_write_opcode passed vaddr, not
              vaddr & PAGE_MASK): 6.1's range is page-aligned only for a probe at a page's first byte.
  uprobe-off  disabling it: uprobe_unregister -> remove_breakpoint -> set_orig_insn ->
              uprobe_write_opcode with the original instruction.  The restored copy is identical to
              the page cache's page, so __replace_page gets no new page: the same window, the PTE
              cleared (the next access faults the file's page back in) and on 6.1 no change_pte.
Both also report the instruction's first byte (int3 while the probe is on, the original after)
and the hits uprobe_profile counted: one per call while the probe was on.
"""

from __future__ import annotations

from typing import Sequence

from harness.events import Event, Record
from harness.model.callsites import register_judged
from harness.model.expect import Expectation, Want, _finding
from harness.model.families._common import register, windows_then
from harness.model.findings import Finding
from harness.model.ops import PAGE, AddressSpace, Op
from harness.model.versions import Features

INT3 = 0xCC
FIELDS = ("vaddr", "offset", "orig", "byte", "calls", "hits")
SCENARIO = "uprobe"


def replace_page_want(vaddr: int, f: Features, install: bool) -> Want:
    """__replace_page's window for a probe at `vaddr`: installing it maps a new page (6.1: change_pte)."""
    start = vaddr & ~(PAGE - 1) if f.uprobe_page_aligned else vaddr
    what = "placing the probe" if install else "removing it"
    return Want(Event.CLEAR, start, start + PAGE, f"uprobe: {what}, __replace_page",
                change_pte=vaddr if install and f.change_pte else None,
                invalidate_range=(start, start + PAGE) if f.invalidate_range else None)


def _expect(op: Op, f: Features, install: bool) -> Expectation:
    vaddr = op.extra["vaddr"]
    want = replace_page_want(vaddr, f, install)
    byte, orig = op.extra["byte"], op.extra["orig"]
    calls, hits = op.extra["calls"], op.extra["hits"]

    def reported(records: Sequence[Record]) -> list[Finding]:
        findings: list[Finding] = []
        expected = INT3 if install else orig
        if byte != expected:
            findings.append(_finding("uprobe", op, f"the probed instruction's first byte is {byte:#04x} "
                                     f"{'with' if install else 'after'} the probe", None, records,
                                     expected=f"{expected:#04x}"))
        if hits != calls:
            findings.append(_finding("uprobe", op, f"uprobe_profile counts {hits} hits for {calls} calls of the "
                                     f"probed function", None, records, expected=f"{calls} hits"))
        return findings

    return windows_then(op, [want], f, reported)


def expect_uprobe_on(op: Op, _aspace: AddressSpace, f: Features) -> Expectation:
    return _expect(op, f, install=True)


def expect_uprobe_off(op: Op, _aspace: AddressSpace, f: Features) -> Expectation:
    return _expect(op, f, install=False)


register("uprobe-on", expect_uprobe_on, ints=FIELDS)
register("uprobe-off", expect_uprobe_off, ints=FIELDS)
register_judged("__replace_page", SCENARIO)
