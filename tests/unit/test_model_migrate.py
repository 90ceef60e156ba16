"""Page migration in the model (harness/model/families/migrate.py): try_to_migrate_one's CLEAR per page
or PMD-mapped THP for move_pages and mbind, nothing else (no window when the migration entries are
removed), MADV_DONTNEED's CLEAR per page, compaction's 4 KiB CLEARs and a window for every page that
changed frame.  Each rule with a trace that obeys it and one that breaks it."""

import pytest

from harness.events import Event
from harness.model.expect import judge
from harness.model.families.migrate import judge_compaction_moves, judge_foreign_move
from harness.model.ops import ModelError, Op
from harness.model.versions import features_for
from tests.unit.tracebuilder import A, K, M, PID, TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
KCOMPACTD = 40


def moves(kind="numa", pages=256, node=1, **over):
    extra = dict(node=node, pages=pages, already=0, moved=pages, failed=0, thp_heads=0, err=0)
    extra.update(over)
    return extra


def numa_trace(f, *, thp=False, kind="numa", skip=None, extra_window=None, swap=False, no_ir=False,
               retry=None, **over):
    """map A (1 MiB of pages, or 4 MiB of THPs), then move it: a CLEAR per page or per 2 MiB block."""
    tb = TraceBuilder()
    size = 4 * M if thp else M
    ops = [tb.op("cpu", tb.tick(), cpu=0), Op("map", 0, tb.tick(), name="A", start=A, end=A + size, thp=thp)]
    unit = 2 * M if thp else 4 * K
    units = [(s, s + unit) for s in range(A, A + size, unit)]
    if swap:
        units[1], units[2] = units[2], units[1]
    if retry is not None:
        units.append(units[retry])
    t0 = tb.tick()
    for i, (s, e) in enumerate(units):
        if i == skip:
            continue
        tb.window(Event.CLEAR, s, e, ir=f.invalidate_range and not no_ir)
    if extra_window:
        tb.window(Event.CLEAR, *extra_window, ir=f.invalidate_range)
    pages = size // (4 * K)
    ops.append(tb.op(kind, t0, name="A", start=A, end=A + size, anon_huge_kb=4096 if thp else 0,
                     extra=moves(kind, pages, **over)))
    ops.append(tb.op("verify", tb.tick(), name="A", start=A, end=A + size))
    ops.append(tb.op("exit", tb.tick()))
    tb.release()
    return [x.rule for x in judge(tb.records, ops, PID, f).findings]


@pytest.mark.parametrize("f", [V61, V612])
@pytest.mark.parametrize("kind", ["numa", "mbind"])
@pytest.mark.parametrize("thp", [False, True])
def test_a_clear_per_page_or_thp_moved(f, kind, thp):
    assert numa_trace(f, kind=kind, thp=thp) == []


def test_a_retried_folio_may_be_unmapped_again():
    assert numa_trace(V612, retry=3) == []


def test_a_page_moved_without_a_window():
    assert numa_trace(V612, skip=5) == ["missing"]
    assert numa_trace(V612, thp=True, skip=1) == ["missing"]


def test_any_other_window_is_unexpected():
    assert numa_trace(V612, extra_window=(A, A + 8 * K)) == ["unexpected"]
    # a window after the move, as if removing the migration entries opened one
    assert numa_trace(V61, thp=True, extra_window=(A, A + 2 * M)) == []     # a retry of block 0: allowed
    assert numa_trace(V61, thp=True, extra_window=(A + 4 * K, A + 2 * M)) == ["unexpected"]


def test_a_thp_unmapped_page_by_page_is_wrong():
    tb = TraceBuilder()
    ops = [Op("map", 0, tb.tick(), name="A", start=A, end=A + 4 * M, thp=True)]
    t0 = tb.tick()
    for s in range(A, A + 4 * M, 4 * K):
        tb.window(Event.CLEAR, s, s + 4 * K)
    ops.append(tb.op("numa", t0, name="A", start=A, end=A + 4 * M, anon_huge_kb=4096, extra=moves(pages=1024)))
    assert set(x.rule for x in judge(tb.records, ops, PID, V612).findings) == {"unexpected", "missing"}


def test_folios_are_unmapped_in_address_order():
    assert numa_trace(V612, swap=True) == ["order"]


def test_6_1_ends_each_window_with_invalidate_range():
    assert numa_trace(V61, no_ir=True).count("migrate") == 256


def test_pages_left_behind_or_an_error():
    assert numa_trace(V612, failed=3, moved=253) == ["migrate"]
    assert numa_trace(V612, kind="mbind", err=5) == ["migrate"]


def test_the_thp_state_afterwards_is_checked():
    tb = TraceBuilder()
    ops = [Op("map", 0, tb.tick(), name="A", start=A, end=A + 2 * M, thp=True)]
    t0 = tb.tick()
    tb.window(Event.CLEAR, A, A + 2 * M)
    ops.append(tb.op("numa", t0, name="A", start=A, end=A + 2 * M, anon_huge_kb=0, extra=moves(pages=512)))
    assert [x.rule for x in judge(tb.records, ops, PID, V612).findings] == ["thp-state"]


def test_pages_already_on_the_node_are_refused():
    with pytest.raises(ModelError, match="already"):
        numa_trace(V612, already=4)


def fragment_trace(f, skip=None):
    tb = TraceBuilder()
    ops = [Op("map", 0, tb.tick(), name="F", start=A, end=A + 64 * K)]
    t0 = tb.tick()
    for i, p in enumerate(range(A + 4 * K, A + 64 * K, 8 * K)):
        if i != skip:
            tb.window(Event.CLEAR, p, p + 4 * K, ir=f.invalidate_range)
    ops.append(tb.op("fragment", t0, name="F", start=A, end=A + 64 * K, extra={"pages": 8}))
    return [x.rule for x in judge(tb.records, ops, PID, f).findings]


def test_fragment_is_a_dontneed_per_other_page():
    assert fragment_trace(V61) == [] and fragment_trace(V612) == []
    assert fragment_trace(V612, skip=2) == ["missing"]


def compact_trace(f, windows, moved=(), t_reads=None, pid=PID):
    tb = TraceBuilder()
    ops = [Op("map", 0, tb.tick(), name="F", start=A, end=A + 64 * K)]
    t_read0 = tb.tick()
    t0 = tb.tick()
    for s, e in windows:
        tb.window(Event.CLEAR, s, e, ir=f.invalidate_range, pid=pid)
    t1 = tb.tick()
    r0, r1 = t_reads or (t_read0, tb.tick())
    op = Op("compact", t0, t1, name="F", start=A, end=A + 64 * K,
            extra={"pages": 8, "moved": len(moved), "t_read0": r0, "t_read1": r1})
    ops.append(op)
    j = judge(tb.records, ops, PID, f)
    return [x.rule for x in j.findings] + [x.rule for x in judge_compaction_moves(op, list(moved), j.trace.pairs,
                                                                                  tb.records)]


def test_compaction_moves_single_pages_of_any_vma():
    stack = 0x7FFC00000000
    assert compact_trace(V61, [(A, A + 4 * K), (stack, stack + 4 * K)], moved=[A]) == []
    assert compact_trace(V612, [(A + 8 * K, A + 12 * K)], moved=[A + 8 * K]) == []


def test_compaction_does_not_move_a_thp_or_a_range():
    assert compact_trace(V612, [(A, A + 2 * M)]) == ["unexpected"]


def test_a_page_that_changed_frame_had_its_window():
    assert compact_trace(V612, [(A, A + 4 * K)], moved=[A, A + 8 * K]) == ["migrate"]
    # kcompactd's window counts: whoever migrated the page
    assert compact_trace(V612, [(A + 8 * K, A + 12 * K)], moved=[A + 8 * K], pid=KCOMPACTD) == []
    # ... but only between the two reads of pagemap
    assert compact_trace(V612, [(A, A + 4 * K)], moved=[A], t_reads=(1, 2)) == ["migrate"]


def foreign_move(windows, unit=4 * K, size=64 * K):
    """movepid of a VMM's range: the windows in the VMM's mm while move_pages ran (any task's)."""
    tb = TraceBuilder()
    t0 = tb.tick()
    for s, e in windows:
        tb.window(Event.CLEAR, s, e, pid=55)
    op = Op("movepid", t0, tb.tick(), start=A, end=A + size, extra=moves(pages=size // (4 * K), pid=99))
    tb.window(Event.CLEAR, A + 8 * M, A + 8 * M + 4 * K)      # after the move: not its business
    return [x.rule for x in judge_foreign_move(op, unit, tb.records)]


def test_a_vmms_pages_moved_from_outside():
    pages = [(p, p + 4 * K) for p in range(A, A + 64 * K, 4 * K)]
    assert foreign_move(pages) == []
    assert foreign_move(pages[1:]) == ["missing"]
    assert foreign_move(pages + [(A, A + 8 * K)]) == ["unexpected"]
    thps = [(A, A + 2 * M), (A + 2 * M, A + 4 * M)]
    assert foreign_move(thps, unit=2 * M, size=4 * M) == []
    assert foreign_move(thps[:1] + [(A + 2 * M, A + 2 * M + 4 * K)], unit=2 * M, size=4 * M) == \
        ["unexpected", "missing"]
