"""KSM in the model: ksmd's windows per page, COW of a merged page, unmerge, data intact."""

from harness.events import Event
from harness.model.expect import judge
from harness.model.ops import Op
from harness.model.versions import features_for
from tests.unit.tracebuilder import A, K, PID, TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
CLEAR = Event.CLEAR
KSMD = 35
PAGES = 4


def ksm_trace(f, per_page=(1, 2, 2, 2), pte=None, merged=PAGES, cow=True, unmerge=True, bad_pages=0):
    """map, fill, ksm (ksmd: wp on one page, wp + replace on the others), write, unmerge.
    `pte`: whether ksmd's windows carry change_pte (default: as the kernel has it)."""
    pte = f.change_pte if pte is None else pte
    tb = TraceBuilder()
    ops = [Op("map", 0, tb.tick(), name="K", start=A, end=A + PAGES * 4 * K)]
    ops.append(Op("fill", tb.tick(), tb.tick(), name="K", start=A, end=A + PAGES * 4 * K, value=7))
    t0 = tb.tick()
    for i, n in enumerate(per_page):
        page = A + i * 4 * K
        for _ in range(n):
            tb.window(CLEAR, page, page + 4 * K, ir=f.invalidate_range, pte=page if pte else None, pid=KSMD)
    ops.append(Op("ksm", t0, tb.tick(), name="K", start=A, end=A + PAGES * 4 * K, ksmd_pid=KSMD,
                  merging_pages=merged, full_scans=2))
    t0 = tb.tick()
    if cow:
        tb.window(CLEAR, A + 8 * K, A + 12 * K, ir=f.invalidate_range, pte=A + 8 * K if f.change_pte else None)
    ops.append(Op("write", t0, tb.tick(), name="K", start=A + 8 * K, end=A + 12 * K, value=9))
    ops.append(Op("verify", tb.tick(), tb.tick(), name="K", start=A, end=A + PAGES * 4 * K, bad_pages=bad_pages))
    t0 = tb.tick()
    if unmerge:
        for page in (A, A + 4 * K, A + 12 * K):
            tb.window(CLEAR, page, page + 4 * K, ir=f.invalidate_range, pte=page if f.change_pte else None)
    ops.append(Op("unmerge", t0, tb.tick(), name="K", start=A, end=A + PAGES * 4 * K))
    ops.append(Op("exit", tb.tick(), tb.tick()))
    tb.release()
    return [x.rule for x in judge(tb.records, ops, PID, f).findings]


def test_the_specification_on_both_kernels():
    assert ksm_trace(V61) == []
    assert ksm_trace(V612) == []


def test_change_pte_missing_on_6_1():
    assert set(ksm_trace(V61, pte=False)) == {"change-pte"}


def test_change_pte_on_6_12_is_wrong():
    assert set(ksm_trace(V612, pte=True)) == {"change-pte"}


def test_pages_not_all_merged():
    assert ksm_trace(V612, merged=3) == ["ksm"]


def test_two_pages_with_only_write_protect():
    assert ksm_trace(V612, per_page=(1, 1, 2, 2)) == ["ksm"]


def test_a_page_merged_without_a_window():
    assert ksm_trace(V612, per_page=(1, 2, 0, 2)) == ["ksm"]


def test_the_cow_of_a_merged_page_is_required():
    assert ksm_trace(V612, cow=False) == ["missing"]


def test_unmerge_breaks_every_remaining_ksm_page():
    assert ksm_trace(V612, unmerge=False) == ["missing", "missing", "missing"]


def test_data_must_be_intact():
    assert ksm_trace(V612, bad_pages=2) == ["data"]
