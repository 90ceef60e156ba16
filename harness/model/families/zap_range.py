"""The kernel zapping part of a process on its behalf: joining a time namespace and TCP zero-copy
receive (guest/workloads/mmops-zaprange.c; docs/zap-range.md has the kernel functions, read from
6.1 and 6.12).

  timens  setns(CLONE_NEWTIME) -> commit_nsset -> timens_commit -> vdso_join_timens: every [vvar]
          VMA zapped whole, so the vDSO faults its data pages back from the namespace's.  6.1:
          zap_page_range(vma, vm_start, size); 6.12: zap_vma_pages -> zap_page_range_single.  Either
          way one CLEAR window over exactly the VMA, blockable, with invalidate_range inside on 6.1.
  tcpzc   getsockopt(TCP_ZEROCOPY_RECEIVE) -> tcp_zerocopy_receive: with at least a page queued,
          total = min(length, VMA's end - address, queued) rounded down to pages; unless the
          TLB_CLEAN_HINT flag is given (mmops does not), [address, address + total) is zapped
          before the pages are inserted (vm_insert_pages: no callback).  6.1 zap_page_range, 6.12
          zap_page_range_single: one CLEAR, blockable, invalidate_range inside on 6.1.  With less
          than a page queued, nothing.
"""

from __future__ import annotations

from typing import Sequence

from harness.events import Event, Record
from harness.model.callsites import register_judged
from harness.model.expect import Expectation, Want, _finding, _ir
from harness.model.families._common import register, windows_then
from harness.model.findings import Finding
from harness.model.ops import PAGE, AddressSpace, Op
from harness.model.versions import Features

SCENARIO = "zap-range"


def _zapper(f: Features) -> str:
    return "zap_page_range" if f.version < (6, 12) else "zap_page_range_single"


def expect_timens(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    wants = [Want(Event.CLEAR, op.start, op.end, f"setns(CLONE_NEWTIME): vdso_join_timens zaps [vvar] with "
                  f"{_zapper(f)}", invalidate_range=_ir(f, op.start, op.end))]

    def reported(records: Sequence[Record]) -> list[Finding]:
        return [] if op.extra["clock_ok"] else [
            _finding("timens", op, "CLOCK_MONOTONIC read through the vDSO after joining the time namespace went "
                     "backwards", None, records)]

    return windows_then(op, wants, f, reported)


def expect_tcpzc(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    inq, length = op.extra["inq"], op.extra["length"]
    total = min(length, op.end - op.start, inq) & ~(PAGE - 1) if inq >= PAGE else 0
    wants = [Want(Event.CLEAR, op.start, op.start + total, f"TCP_ZEROCOPY_RECEIVE of {inq} queued bytes: "
                  f"tcp_zerocopy_receive zaps the pages it maps with {_zapper(f)}",
                  invalidate_range=_ir(f, op.start, op.start + total))] if total else []

    def reported(records: Sequence[Record]) -> list[Finding]:
        mapped = op.extra["mapped"]
        return [_finding("tcp-zerocopy", op, f"{mapped} bytes mapped, more than the {total} zapped for it", None,
                         records)] if mapped > total else []

    return windows_then(op, wants, f, reported)


register("timens", expect_timens, ints=("clock_ok",))
register("tcpzc", expect_tcpzc, ints=("inq", "length", "mapped", "skip", "zc_err"))
register_judged("zap_page_range", SCENARIO)
register_judged("zap_page_range_single", SCENARIO)
