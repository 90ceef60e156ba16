"""Each contract rule: a trace that obeys it passes, a trace that breaks it fails with that rule."""

import pytest

from harness.events import Callback, Event, Subscriber
from harness.model.contract import check_contract
from harness.model.versions import features_for
from tests.unit.tracebuilder import A, M, PID, TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
CLEAR, UNMAP = Event.CLEAR, Event.UNMAP


def rules(tb: TraceBuilder, f=V612, **kw) -> list[str]:
    return [x.rule for x in check_contract(tb.records, f, **kw).findings]


def test_nested_windows_on_one_task_and_interleaved_tasks_pass():
    tb = TraceBuilder().start(CLEAR, A + 4096, A + 8192).window(CLEAR, A, A + 2 * M)
    tb.start(UNMAP, A + 4 * M, A + 5 * M, pid=7).end(CLEAR, A + 4096, A + 8192).end(UNMAP, A + 4 * M, A + 5 * M, pid=7)
    trace = check_contract(tb.records, V612)
    assert trace.findings == []
    outer, inner, other = trace.pairs
    assert inner.parent is outer and outer.children == [inner] and other.parent is None


def test_start_without_end():
    tb = TraceBuilder().start(CLEAR, A, A + 4096)
    findings = check_contract(tb.records, V612).findings
    assert [f.rule for f in findings] == ["pairing"] and "has no end" in findings[0].message
    assert findings[0].window and findings[0].window[0].startswith("> #1")


def test_end_without_start():
    assert rules(TraceBuilder().end(CLEAR, A, A + 4096)) == ["pairing"]


def test_inner_end_dropped_is_named_when_the_outer_end_arrives():
    tb = TraceBuilder().start(CLEAR, A + 4096, A + 8192).start(CLEAR, A, A + 2 * M).end(CLEAR, A + 4096, A + 8192)
    findings = check_contract(tb.records, V612).findings
    assert [f.rule for f in findings] == ["pairing"]
    assert "start #2" in findings[0].message and "enclosing window" in findings[0].message


def test_end_range_must_equal_start_range():
    tb = TraceBuilder().start(CLEAR, A, A + 8192).end(CLEAR, A, A + 4096)
    assert rules(tb) == ["end-range"]
    tb = TraceBuilder().start(CLEAR, A, A + 8192).end(UNMAP, A, A + 8192)
    assert rules(tb) == ["end-range"]


def test_blockable_everywhere_but_the_reaper():
    tb = TraceBuilder().window(UNMAP, A, A + M, blockable=False, pid=9)
    assert rules(tb) == ["blockable", "blockable"]
    assert rules(tb, nonblocking_pids=frozenset({9})) == []


def test_end_flags_must_match_start_flags():
    tb = TraceBuilder().start(UNMAP, A, A + M, blockable=False, pid=9).end(UNMAP, A, A + M, pid=9)
    assert rules(tb, nonblocking_pids=frozenset({9})) == ["end-range"]


def test_change_pte_inside_its_window_on_6_1():
    assert rules(TraceBuilder().window(CLEAR, A, A + 4096, ir=True, pte=A), V61) == []


def test_change_pte_outside_a_window_on_6_1():
    tb = TraceBuilder().window(CLEAR, A, A + 4096).add(Callback.CHANGE_PTE, A)
    assert rules(tb, V61) == ["change-pte"]


def test_change_pte_outside_the_window_range_on_6_1():
    assert rules(TraceBuilder().window(CLEAR, A, A + 4096, pte=A + 8192), V61) == ["change-pte"]


def test_change_pte_on_6_12_fails():
    assert rules(TraceBuilder().window(CLEAR, A, A + 4096, pte=A), V612) == ["change-pte"]


def test_invalidate_range_inside_and_after_its_window_on_6_1():
    tb = TraceBuilder().window(CLEAR, A, A + 8192, ir=True).ir(A + 4096, A + 8192)
    assert rules(tb, V61) == []


def test_invalidate_range_after_unmap_may_cover_the_freed_page_table():
    # free_pgtables: pte_free_tlb widens the gather down to the table's address
    tb = TraceBuilder().window(UNMAP, A + 7 * M, A + 8 * M, ir=True).ir(A + 6 * M, A + 8 * M)
    assert rules(tb, V61) == []
    tb = TraceBuilder().window(CLEAR, A + 7 * M, A + 8 * M, ir=True).ir(A + 6 * M, A + 8 * M)
    assert rules(tb, V61) == ["invalidate-range"]


def test_a_freed_upper_table_flushes_from_its_own_boundary_with_5_level_paging():
    # A stack page at the top of a 5-level address space: free_pgd_range frees its P4D table, and the
    # gather flushes from the 256 TiB boundary (a tree built from defconfig, LA57 under TCG).
    top = (1 << 56) - 0x2000
    tb = TraceBuilder().window(UNMAP, top, top + 0x1000, ir=True).ir(0xFF000000000000, top - 0x1FF000)
    assert rules(tb, V61) == []
    # From below the 1 GiB floor, but not at a 512 GiB boundary: no freed table starts there.
    tb = TraceBuilder().window(UNMAP, top, top + 0x1000, ir=True).ir(top - (1 << 31), top + 0x1000)
    assert rules(tb, V61) == ["invalidate-range"]


def test_invalidate_range_beyond_the_window_on_6_1():
    tb = TraceBuilder().window(CLEAR, A, A + 4096).ir(A, A + 8192)
    assert rules(tb, V61) == ["invalidate-range"]
    assert rules(TraceBuilder().ir(A, A + 4096), V61) == ["invalidate-range"]


def test_invalidate_range_on_6_12_fails():
    assert rules(TraceBuilder().window(CLEAR, A, A + 4096, ir=True), V612) == ["invalidate-range"]


def test_arch_invalidate_only_from_6_6():
    # The module records it from a notifier of its own (the TLB subscriber).
    tb = TraceBuilder().add(Callback.ARCH_INVALIDATE, A, A + 4096, subscriber=Subscriber.TLB)
    assert rules(tb, V612) == []
    assert rules(tb, V61) == ["arch-invalidate"]


def test_release_exactly_once_and_nothing_after():
    assert rules(TraceBuilder().window(CLEAR, A, A + 4096).release(), expect_release=True) == []
    assert rules(TraceBuilder().release().release()) == ["release"]
    assert rules(TraceBuilder().window(CLEAR, A, A + 4096), expect_release=True) == ["release"]
    after = check_contract(TraceBuilder().release().window(CLEAR, A, A + 4096).records, V612).findings
    assert [f.rule for f in after] == ["release", "release"] and "after release" in after[0].message


def test_window_still_open_at_release():
    assert rules(TraceBuilder().start(CLEAR, A, A + 4096).release()) == ["pairing"]


def test_interval_records_after_release_are_not_primary_callbacks():
    tb = TraceBuilder().release().add(Callback.INTERVAL_INVALIDATE, 0, 2**64 - 1, Event.UNMAP,
                                      subscriber=Subscriber.INTERVAL)
    assert rules(tb) == []


@pytest.mark.parametrize("start, end", [(A + 1, A + 4096), (A + 4096, A + 4096), (A, A + 100)])
def test_ranges_are_page_aligned_and_nonempty(start, end):
    assert "range" in rules(TraceBuilder().window(CLEAR, start, end))


def test_young_ranges_are_checked_too():
    assert rules(TraceBuilder().add(Callback.CLEAR_FLUSH_YOUNG, A, A + 4096)) == []
    assert rules(TraceBuilder().add(Callback.CLEAR_YOUNG, A, A + 10)) == ["range"]


def test_sequence_gap_is_reported():
    tb = TraceBuilder().window(CLEAR, A, A + 4096).window(CLEAR, A, A + 4096)
    del tb.records[1]
    findings = check_contract(tb.records, V612).findings
    assert "sequence" in [f.rule for f in findings]


def test_windows_of_the_same_task_pair_by_pid():
    tb = TraceBuilder().start(CLEAR, A, A + 4096, pid=PID).end(CLEAR, A, A + 4096, pid=PID + 1)
    assert sorted(rules(tb)) == ["pairing", "pairing"]
