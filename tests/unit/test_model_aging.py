"""Aging in the model: khugepaged's test_young on old PTEs only and its collapse; reclaim's
clear_flush_young or MGLRU clear_young by version, before each swap-out CLEAR; MADV_COLD's bare flush
over exactly the PTEs it made old, and its need for a pinned workload."""

import pytest

from harness.events import Callback, Event
from harness.model.expect import judge
from harness.model.ops import ModelError, Op, VmaInfo
from harness.model.versions import features_for
from tests.unit.tracebuilder import A, K, M, PID, TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
KHUGEPAGED = 36
TOUCHED = range(A + 1 * M, A + 1 * M + 64 * K, 4 * K)     # touched again after MADV_COLD: young


def khugepaged_trace(f, *, test_touched=False, skip=0, collapse=True, collapse_block2=False, huge_kb=2048,
                     alloc_failed=0, bare_flush=True, clear_young=False, flush_end=A + 4 * M, migrate=False):
    """cpu 0, map B 4 MiB, MADV_COLD, touch 64 KiB of block 1, khugepaged: test_young on every old PTE,
    collapse block 1.  `migrate`: the workload is pinned to CPU 1 between map and MADV_COLD."""
    tb = TraceBuilder()
    ops = [tb.op("cpu", tb.tick(), cpu=0), Op("map", 0, tb.tick(), name="B", start=A, end=A + 4 * M)]
    if migrate:
        ops.append(tb.op("cpu", tb.tick(), cpu=1))
    t0 = tb.tick()
    if bare_flush and f.invalidate_range:
        tb.ir(A, flush_end)            # 6.1: the mmu_gather flush of the PTEs made old
    ops.append(tb.op("cold", t0, name="B", start=A, end=A + 4 * M))
    ops.append(tb.op("touch", tb.tick(), name="B", start=TOUCHED.start, end=TOUCHED.stop))
    if not bare_flush and f.invalidate_range:
        tb.ir(A, A + 4 * M)            # the same flush, but outside MADV_COLD
    t0 = tb.tick()
    pages = [p for p in range(A, A + 4 * M, 4 * K) if p not in TOUCHED or test_touched]
    for p in pages[skip:]:
        tb.add(Callback.TEST_YOUNG, p, 0, pid=KHUGEPAGED)
    if clear_young:
        tb.add(Callback.CLEAR_YOUNG, A, A + 4 * K, pid=KHUGEPAGED)
    if collapse:
        tb.window(Event.CLEAR, A, A + 2 * M, ir=f.invalidate_range, pid=KHUGEPAGED)
    if collapse_block2:
        tb.window(Event.CLEAR, A + 2 * M, A + 4 * M, ir=f.invalidate_range, pid=KHUGEPAGED)
    ops.append(tb.op("khugepaged", t0, name="B", start=A, end=A + 4 * M, khugepaged_pid=KHUGEPAGED,
                     anon_huge_kb=huge_kb, collapse_alloc=1, collapse_alloc_failed=alloc_failed))
    ops.append(tb.op("exit", tb.tick()))
    tb.release()
    return [x.rule for x in judge(tb.records, ops, PID, f).findings]


def test_khugepaged_specification_on_both_kernels():
    assert khugepaged_trace(V61) == []
    assert khugepaged_trace(V612) == []


def test_test_young_on_a_young_pte_is_wrong():
    assert set(khugepaged_trace(V612, test_touched=True)) == {"test-young"}


def test_every_old_pte_is_tested():
    assert khugepaged_trace(V612, skip=3) == ["test-young"]


def test_the_block_with_a_referenced_pte_is_collapsed():
    assert khugepaged_trace(V612, collapse=False, huge_kb=0) == ["missing", "thp-state"]


def test_anon_huge_pages_must_follow_the_collapse():
    assert khugepaged_trace(V612, huge_kb=0) == ["thp-state"]


def test_a_block_with_no_referenced_pte_is_not_collapsed():
    assert khugepaged_trace(V61, collapse_block2=True) == ["unexpected"]


def test_a_failed_huge_page_allocation_excuses_a_missing_collapse():
    assert khugepaged_trace(V612, collapse=False, huge_kb=0, alloc_failed=1) == []


def test_khugepaged_only_tests():
    assert khugepaged_trace(V612, clear_young=True) == ["test-young"]


def test_madv_cold_flush_is_bare_only_inside_madv_cold():
    assert khugepaged_trace(V61, bare_flush=False) == ["invalidate-range", "cold"]


def test_madv_cold_flushes_exactly_the_ptes_it_made_old():
    # 6.1 seen with a migrated workload: the last three pages were still in CPU 0's lru_add batch,
    # MADV_COLD skipped them and khugepaged found them young.
    assert khugepaged_trace(V61, flush_end=A + 4 * M - 3 * 4 * K) == ["cold"]
    # One page past the mapping is also outside MADV_COLD's range, which the contract names.
    assert khugepaged_trace(V61, flush_end=A + 4 * M + 4 * K) == ["invalidate-range", "cold"]


def test_madv_cold_needs_a_pinned_workload():
    with pytest.raises(ModelError, match="pin the workload"):
        khugepaged_trace(V612, migrate=True)
    tb = TraceBuilder()
    ops = [Op("map", 0, tb.tick(), name="B", start=A, end=A + 4 * M), tb.op("cold", tb.tick(), name="B", start=A,
                                                                              end=A + 4 * M)]
    with pytest.raises(ModelError, match="pin the workload"):
        judge(tb.records, ops, PID, V612)


PAGES = 8
REGION = (A, A + PAGES * 4 * K)
STACK = VmaInfo(0x7FFF00000000, 0x7FFF00021000, "rw-p", frozenset({"rd", "wr"}))
VMAS = (VmaInfo(REGION[0], REGION[1], "rw-p", frozenset({"rd", "wr"})), STACK)


def reclaim_trace(f, lru_gen, *, aging=None, swapped=PAGES, unmapped=PAGES, unmap_first=False, test_young=False,
                  outside=False, swap_kb=None):
    """map A, fill, reclaim: per page the version's aging callback, then the swap-out CLEAR."""
    if aging is None:
        aging = Callback.CLEAR_YOUNG if lru_gen & 1 and f.mglru_clear_young else Callback.CLEAR_FLUSH_YOUNG
    tb = TraceBuilder()
    ops = [Op("map", 0, tb.tick(), name="A", start=REGION[0], end=REGION[1])]
    ops.append(tb.op("fill", tb.tick(), name="A", start=REGION[0], end=REGION[1], value=5))
    t0 = tb.tick()
    for i, p in enumerate(range(*REGION, 4 * K)):
        if unmap_first and i == 0:
            tb.window(Event.CLEAR, p, p + 4 * K, ir=f.invalidate_range)
        tb.add(aging, p, p + 4 * K)
        if i < unmapped and not (unmap_first and i == 0):
            tb.window(Event.CLEAR, p, p + 4 * K, ir=f.invalidate_range)
    tb.add(aging, STACK.start, STACK.start + 4 * K)       # MGLRU's walk or the stack's own reclaim
    if test_young:
        tb.add(Callback.TEST_YOUNG, REGION[0], 0)
    if outside:
        tb.add(aging, 0x1000, 0x2000)
    ops.append(tb.op("reclaim", t0, name="A", start=REGION[0], end=REGION[1], lru_gen=lru_gen, vmas=VMAS,
                     swap_kb=swapped * 4 if swap_kb is None else swap_kb))
    ops.append(tb.op("verify", tb.tick(), name="A", start=REGION[0], end=REGION[1]))
    ops.append(tb.op("exit", tb.tick()))
    tb.release()
    return [x.rule for x in judge(tb.records, ops, PID, f).findings]


def test_reclaim_specification_by_version_and_lru_gen():
    assert reclaim_trace(V61, 0x0000) == []
    assert reclaim_trace(V61, 0x0007) == []      # 6.1's MGLRU look-around has no notifier
    assert reclaim_trace(V612, 0x0007) == []
    assert reclaim_trace(V612, 0x0000) == []


def test_clear_flush_young_under_6_12_mglru_is_wrong():
    rules = reclaim_trace(V612, 0x0007, aging=Callback.CLEAR_FLUSH_YOUNG)
    assert set(rules) == {"aging"}


def test_clear_young_on_6_1_is_wrong():
    assert set(reclaim_trace(V61, 0x0007, aging=Callback.CLEAR_YOUNG)) == {"aging"}


def test_a_page_is_aged_before_it_is_unmapped():
    assert reclaim_trace(V61, 0, unmap_first=True) == ["aging"]


def test_every_swapped_page_was_unmapped_under_a_window():
    assert reclaim_trace(V612, 0x0007, unmapped=PAGES - 2) == ["reclaim"]


def test_reclaim_that_swaps_nothing_is_reported():
    assert reclaim_trace(V61, 0, unmapped=0, swap_kb=0) == ["reclaim"]


def test_no_test_young_from_reclaim():
    assert reclaim_trace(V612, 0x0007, test_young=True) == ["aging"]


def test_aging_outside_the_workloads_vmas_is_wrong():
    assert reclaim_trace(V61, 0, outside=True) == ["aging"]
