"""/proc/PID/clear_refs in the model (harness/model/families/clear_refs.py): 4 opens one SOFT_DIRTY
window over the whole address space and leaves the written pages soft-dirty; 1-3 and 5 nothing; each
rule with the trace the kernel's source gives, and the same trace broken."""

import pytest

from harness.events import Callback, Event
from harness.model.contract import WHOLE_SPACE, check_contract
from harness.model.ops import ModelError, Op
from harness.model.versions import features_for
from tests.unit.tracebuilder import A, K, TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
SOFT_DIRTY = Event.SOFT_DIRTY
BOTH = pytest.mark.parametrize("f", [V61, V612], ids=["6.1", "6.12"])
WHOLE = WHOLE_SPACE[1]
G = 1 << 30
ALL_PAGES = (1 << 64) - 1        # every page of a 256 KiB mapping


def finish(tb: TraceBuilder, ops: list[Op], f) -> list[str]:
    return tb.rules(ops, f)


def mapping(tb: TraceBuilder) -> Op:
    return tb.op("map", tb.tick(), name="C", start=A, end=A + 256 * K)


def clearrefs(tb: TraceBuilder, t0: int, kind: int) -> Op:
    return tb.op("clearrefs", t0, extra={"type": kind})


def softdirty(tb: TraceBuilder, dirty: int, written: int) -> Op:
    return tb.op("softdirty", tb.tick(), name="C", start=A, end=A + 256 * K, extra={"dirty": dirty, "written": written})


@BOTH
def test_soft_dirty_clear_is_one_window_over_the_whole_address_space(f):
    tb = TraceBuilder()
    m = mapping(tb)
    t0 = tb.tick()
    tb.window(SOFT_DIRTY, 0, WHOLE, ir=f.invalidate_range)
    assert finish(tb, [m, clearrefs(tb, t0, 4), softdirty(tb, 0b100, 0b100)], f) == []


def test_the_whole_space_range_is_no_contract_breach_for_soft_dirty_only():
    tb = TraceBuilder()
    tb.window(SOFT_DIRTY, 0, WHOLE).window(Event.CLEAR, 0, WHOLE)
    assert [x.rule for x in check_contract(tb.records, V612).findings] == ["range", "range"]


def test_soft_dirty_clear_over_less_or_without_invalidate_range_on_6_1_is_wrong():
    tb = TraceBuilder()
    m = mapping(tb)
    t0 = tb.tick()
    tb.window(SOFT_DIRTY, A, A + 256 * K)
    assert finish(tb, [m, clearrefs(tb, t0, 4)], V612) == ["missing", "unexpected"]
    tb = TraceBuilder()
    m = mapping(tb)
    t0 = tb.tick()
    tb.window(SOFT_DIRTY, 0, WHOLE)
    assert finish(tb, [m, clearrefs(tb, t0, 4)], V61) == ["invalidate-range"]


@pytest.mark.parametrize("kind", [1, 2, 3, 5])
def test_the_other_types_open_nothing_and_ask_no_young_callback(kind):
    tb = TraceBuilder()
    assert finish(tb, [mapping(tb), clearrefs(tb, tb.tick(), kind)], V612) == []
    tb = TraceBuilder()
    m = mapping(tb)
    t0 = tb.tick()
    tb.add(Callback.CLEAR_YOUNG, A, A + 4 * K)
    tb.window(SOFT_DIRTY, 0, WHOLE)
    assert finish(tb, [m, clearrefs(tb, t0, kind)], V612) == ["unexpected", "clear-refs"]


@pytest.mark.parametrize("kind, flush", [(1, False), (2, False), (3, True), (5, True)])
def test_clearing_accessed_bits_makes_the_workloads_ptes_old(kind, flush):
    """Seen through 6.1's MADV_COLD afterwards: it flushes only the PTEs it made old itself."""
    tb = TraceBuilder()
    ops = [tb.op("cpu", tb.tick(), cpu=0), mapping(tb), clearrefs(tb, tb.tick(), kind)]
    t0 = tb.tick()
    if flush:
        tb.ir(A, A + 256 * K)
    ops.append(tb.op("cold", t0, name="C", start=A, end=A + 256 * K))
    assert finish(tb, ops, V61) == []
    tb = TraceBuilder()
    ops = [tb.op("cpu", tb.tick(), cpu=0), mapping(tb), clearrefs(tb, tb.tick(), kind)]
    t0 = tb.tick()
    if not flush:
        tb.ir(A, A + 256 * K)
    ops.append(tb.op("cold", t0, name="C", start=A, end=A + 256 * K))
    assert finish(tb, ops, V61) == ["cold"]


def cleared(tb: TraceBuilder) -> list[Op]:
    """The mapping, then clear_refs 4 with its window."""
    m = mapping(tb)
    t0 = tb.tick()
    tb.window(SOFT_DIRTY, 0, WHOLE)
    return [m, clearrefs(tb, t0, 4)]


def test_soft_dirty_pages_must_be_the_written_ones():
    tb = TraceBuilder()
    assert finish(tb, [*cleared(tb), softdirty(tb, 0b100, 0b100)], V612) == []
    tb = TraceBuilder()
    assert finish(tb, [*cleared(tb), softdirty(tb, 0b110, 0b100)], V612) == ["soft-dirty"]   # one not written
    tb = TraceBuilder()
    assert finish(tb, [*cleared(tb), softdirty(tb, 0b000, 0b100)], V612) == ["soft-dirty"]   # a write lost


def test_before_any_clear_every_page_of_a_new_vma_is_soft_dirty():
    """mmap_region gives every new VMA VM_SOFTDIRTY: pagemap reports all its pages soft-dirty."""
    tb = TraceBuilder()
    assert finish(tb, [mapping(tb), softdirty(tb, ALL_PAGES, 0)], V612) == []
    tb = TraceBuilder()
    assert finish(tb, [mapping(tb), softdirty(tb, 0b100, 0b100)], V612) == ["soft-dirty"]


def test_a_vma_made_after_the_clear_is_soft_dirty_whole():
    tb = TraceBuilder()
    ops = [*cleared(tb), tb.op("map", tb.tick(), name="D", start=A + G, end=A + G + 256 * K)]
    d = tb.op("softdirty", tb.tick(), name="D", start=A + G, end=A + G + 256 * K,
              extra={"dirty": ALL_PAGES, "written": 0})
    assert finish(tb, [*ops, d], V612) == []
    tb = TraceBuilder()
    ops = [*cleared(tb), tb.op("map", tb.tick(), name="D", start=A + G, end=A + G + 256 * K)]
    d = tb.op("softdirty", tb.tick(), name="D", start=A + G, end=A + G + 256 * K, extra={"dirty": 0, "written": 0})
    assert finish(tb, [*ops, d], V612) == ["soft-dirty"]


def test_an_unknown_type_is_refused():
    tb = TraceBuilder()
    with pytest.raises(ModelError, match="clear_refs type 6"):
        finish(tb, [mapping(tb), clearrefs(tb, tb.tick(), 6)], V612)
