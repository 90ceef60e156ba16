"""mremap in the model (harness/model/families/mremap.py): shrink and grow in place, moves with
their two UNMAP windows, THPs moved whole or split inside the move, and 6.12's realigned window;
each rule with the trace the kernel's source gives, and the same trace broken."""

import pytest

from harness.events import Event
from harness.model.ops import ModelError, Op
from harness.model.versions import features_for
from tests.unit.tracebuilder import A, K, M, TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
CLEAR, UNMAP = Event.CLEAR, Event.UNMAP
BOTH = pytest.mark.parametrize("f", [V61, V612], ids=["6.1", "6.12"])
G = 1 << 30
S8, S9, S10 = A + 8 * G, A + 9 * G, A + 10 * G
FIXED = 3          # MREMAP_MAYMOVE | MREMAP_FIXED


def finish(tb: TraceBuilder, ops: list[Op], f) -> list[str]:
    return tb.rules(ops, f)


def mapping(tb: TraceBuilder, size: int, thp: bool = False, start: int = A, name: str = "A") -> Op:
    return tb.mapping(size, thp, name, start)


def mremap(tb: TraceBuilder, t0: int, s: int, e: int, ns: int, ne: int, flags: int = 0, huge_kb: int = 0) -> Op:
    return tb.op("mremap", t0, name="A", start=s, end=e,
                 extra={"new_start": ns, "new_end": ne, "flags": flags, "new_huge_kb": huge_kb})


def unmap(tb: TraceBuilder, f, s: int, e: int, nested=()) -> None:
    tb.start(UNMAP, s, e)
    for ns, ne in nested:
        tb.window(CLEAR, ns, ne)
    if f.invalidate_range:
        tb.ir(s, e)
    tb.end(UNMAP, s, e)


# ---- in place ------------------------------------------------------------------------------------

@BOTH
def test_shrink_in_place_is_the_munmap_of_the_tail(f):
    tb = TraceBuilder()
    m = mapping(tb, 4 * M)
    t0 = tb.tick()
    tb.window(CLEAR, A + 2 * M, A + 4 * M)                  # the split at the unaligned new end
    unmap(tb, f, A + 3 * M + 4 * K, A + 4 * M)
    assert finish(tb, [m, mremap(tb, t0, A, A + 4 * M, A, A + 3 * M + 4 * K)], f) == []


def test_shrink_without_the_split_or_with_the_wrong_tail_is_wrong():
    tb = TraceBuilder()
    m = mapping(tb, 4 * M)
    t0 = tb.tick()
    unmap(tb, V612, A + 3 * M + 4 * K, A + 4 * M)
    assert finish(tb, [m, mremap(tb, t0, A, A + 4 * M, A, A + 3 * M + 4 * K)], V612) == ["missing"]
    tb = TraceBuilder()
    m = mapping(tb, 4 * M)
    t0 = tb.tick()
    tb.window(CLEAR, A + 2 * M, A + 4 * M)
    unmap(tb, V612, A + 3 * M, A + 4 * M)
    assert finish(tb, [m, mremap(tb, t0, A, A + 4 * M, A, A + 3 * M + 4 * K)], V612) == ["missing", "unexpected"]


def test_grow_in_place_opens_nothing():
    tb = TraceBuilder()
    m = mapping(tb, 2 * M)
    assert finish(tb, [m, mremap(tb, tb.tick(), A, A + 2 * M, A, A + 4 * M)], V612) == []
    tb = TraceBuilder()
    m = mapping(tb, 2 * M)
    t0 = tb.tick()
    tb.window(UNMAP, A, A + 2 * M)
    assert finish(tb, [m, mremap(tb, t0, A, A + 2 * M, A, A + 4 * M)], V612) == ["unexpected"]


# ---- moves ---------------------------------------------------------------------------------------

@BOTH
def test_a_move_unmaps_the_old_range_twice(f):
    """move_page_tables' UNMAP, then do_munmap's UNMAP of the old range."""
    tb = TraceBuilder()
    m = mapping(tb, 4 * M)
    t0 = tb.tick()
    unmap(tb, f, A, A + 4 * M)
    unmap(tb, f, A, A + 4 * M)
    assert finish(tb, [m, mremap(tb, t0, A, A + 4 * M, S8, S8 + 4 * M, FIXED)], f) == []


def test_a_move_with_one_unmap_or_without_invalidate_range_on_6_1_is_wrong():
    tb = TraceBuilder()
    m = mapping(tb, 4 * M)
    t0 = tb.tick()
    unmap(tb, V612, A, A + 4 * M)
    assert finish(tb, [m, mremap(tb, t0, A, A + 4 * M, S8, S8 + 4 * M, FIXED)], V612) == ["missing"]
    tb = TraceBuilder()
    m = mapping(tb, 4 * M)
    t0 = tb.tick()
    tb.window(UNMAP, A, A + 4 * M).window(UNMAP, A, A + 4 * M)
    assert finish(tb, [m, mremap(tb, t0, A, A + 4 * M, S8, S8 + 4 * M, FIXED)], V61) == ["invalidate-range"] * 2


@BOTH
def test_moving_the_head_of_a_vma_splits_it_before_the_munmap(f):
    tb = TraceBuilder()
    m = mapping(tb, 6 * M)
    t0 = tb.tick()
    unmap(tb, f, A, A + M)
    tb.window(CLEAR, A, A + 2 * M)
    unmap(tb, f, A, A + M)
    assert finish(tb, [m, mremap(tb, t0, A, A + M, S8, S8 + 2 * M, 1)], f) == []


def realigned(f, window_start: int) -> list[str]:
    """A VMA starting 1 MiB into a block, moved whole to a mutually aligned address with nothing below."""
    tb = TraceBuilder()
    m = mapping(tb, 4 * M)
    t0 = tb.tick()
    tb.window(CLEAR, A, A + 2 * M)
    unmap(tb, f, A, A + M)
    cut = tb.op("munmap", t0, name="A", start=A, end=A + M)
    t0 = tb.tick()
    unmap(tb, f, window_start, A + 4 * M)
    unmap(tb, f, A + M, A + 4 * M)
    return finish(tb, [m, cut, mremap(tb, t0, A + M, A + 4 * M, S10 + M, S10 + 4 * M, FIXED)], f)


def test_6_12_realigns_the_window_down_to_the_pmd_boundary_and_6_1_does_not():
    assert realigned(V612, A) == []
    assert realigned(V61, A + M) == []
    assert sorted(realigned(V612, A + M)) == ["missing", "unexpected"]
    assert sorted(realigned(V61, A)) == ["missing", "unexpected"]


def test_no_realignment_when_the_vma_starts_below():
    """The tail of a VMA: can_align_down refuses (the VMA does not start at the address)."""
    tb = TraceBuilder()
    m = mapping(tb, 4 * M)
    t0 = tb.tick()
    unmap(tb, V612, A + M, A + 4 * M)
    tb.window(CLEAR, A, A + 2 * M)
    unmap(tb, V612, A + M, A + 4 * M)
    ops = [m, mremap(tb, t0, A + M, A + 4 * M, S10 + M, S10 + 4 * M, FIXED)]
    assert finish(tb, ops, V612) == []


# ---- THPs ----------------------------------------------------------------------------------------

@BOTH
def test_an_aligned_move_takes_whole_pmds_along(f):
    tb = TraceBuilder()
    m = mapping(tb, 4 * M, thp=True)
    t0 = tb.tick()
    unmap(tb, f, A, A + 4 * M)
    unmap(tb, f, A, A + 4 * M)
    assert finish(tb, [m, mremap(tb, t0, A, A + 4 * M, S8, S8 + 4 * M, FIXED, huge_kb=4096)], f) == []


def test_an_aligned_move_splits_nothing_and_keeps_the_thps():
    tb = TraceBuilder()
    m = mapping(tb, 4 * M, thp=True)
    t0 = tb.tick()
    unmap(tb, V612, A, A + 4 * M, nested=[(A, A + 2 * M)])
    unmap(tb, V612, A, A + 4 * M)
    ops = [m, mremap(tb, t0, A, A + 4 * M, S8, S8 + 4 * M, FIXED, huge_kb=2048)]
    assert finish(tb, ops, V612) == ["unexpected", "thp-state"]


@BOTH
def test_a_misaligned_move_splits_each_thp_inside_its_window(f):
    tb = TraceBuilder()
    m = mapping(tb, 4 * M, thp=True)
    t0 = tb.tick()
    unmap(tb, f, A, A + 4 * M, nested=[(A, A + 2 * M), (A + 2 * M, A + 4 * M)])
    unmap(tb, f, A, A + 4 * M)
    assert finish(tb, [m, mremap(tb, t0, A, A + 4 * M, S9 + M, S9 + 5 * M, FIXED)], f) == []


def test_a_misaligned_move_without_its_splits_is_wrong():
    tb = TraceBuilder()
    m = mapping(tb, 4 * M, thp=True)
    t0 = tb.tick()
    unmap(tb, V612, A, A + 4 * M, nested=[(A, A + 2 * M)])
    unmap(tb, V612, A, A + 4 * M)
    assert finish(tb, [m, mremap(tb, t0, A, A + 4 * M, S9 + M, S9 + 5 * M, FIXED)], V612) == ["missing"]


@BOTH
def test_shrink_through_a_thp_then_move_it_whole(f):
    tb = TraceBuilder()
    m = mapping(tb, 4 * M, thp=True)
    t0 = tb.tick()
    tb.window(CLEAR, A + 2 * M, A + 4 * M)
    unmap(tb, f, A + 3 * M, A + 4 * M)
    shrink = mremap(tb, t0, A, A + 4 * M, A, A + 3 * M, huge_kb=2048)
    t0 = tb.tick()
    unmap(tb, f, A, A + 3 * M)
    unmap(tb, f, A, A + 3 * M)
    move = mremap(tb, t0, A, A + 3 * M, S10, S10 + 3 * M, FIXED, huge_kb=2048)
    assert finish(tb, [m, shrink, move], f) == []


def test_the_model_refuses_what_it_does_not_encode():
    tb = TraceBuilder()
    ops = [mapping(tb, 4 * M), mapping(tb, 4 * M, start=S8, name="B"),
           mremap(tb, tb.tick(), A, A + 4 * M, S8, S8 + 4 * M, FIXED)]
    with pytest.raises(ModelError, match="onto a mapping"):
        finish(tb, ops, V612)
    tb = TraceBuilder()
    ops = [mapping(tb, 4 * M), mremap(tb, tb.tick(), A, A + 8 * M, S8, S8 + 8 * M, FIXED)]
    with pytest.raises(ModelError, match="not inside one VMA"):
        finish(tb, ops, V612)
    tb = TraceBuilder()
    ops = [mapping(tb, 4 * M), mremap(tb, tb.tick(), A, A + 4 * M, S8, S8 + (1 << 40), FIXED)]
    with pytest.raises(ModelError, match="at most 1 GiB"):
        finish(tb, ops, V612)
