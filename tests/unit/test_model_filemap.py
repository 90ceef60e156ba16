"""The filemap family's rules (harness/model/families/filemap.py): each with the trace the kernel's
source gives, and a broken one that fails with a named finding."""

import pytest

from harness.events import Event
from harness.model.ops import ModelError, Op
from harness.model.versions import features_for
from tests.unit.tracebuilder import A, K, M, TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
CLEAR, PROT_PAGE = Event.CLEAR, Event.PROTECTION_PAGE
P = 4 * K


def fmap(tb: TraceBuilder, size: int = M) -> Op:
    return tb.op("fmap", tb.tick(), name="F", start=A, end=A + M, extra={"file_size": size})


def op(tb: TraceBuilder, kind: str, t0: int, off: int = 0, length: int = M, **extra: int) -> Op:
    return tb.op(kind, t0, name="F", start=A + off, end=A + off + length, extra=extra)


def rules(tb: TraceBuilder, ops: list[Op], f=V612) -> list[str]:
    return tb.rules(ops, f)


def written(tb: TraceBuilder, off: int, length: int, kind: str = "fwrite") -> Op:
    return op(tb, kind, tb.tick(), off, length)


def test_msync_cleans_each_dirty_mapped_page_in_index_order():
    for f, ir in ((V612, False), (V61, True)):
        tb = TraceBuilder()
        ops = [fmap(tb), written(tb, 0, 3 * P)]
        t0 = tb.tick()
        for page in range(3):
            tb.window(PROT_PAGE, A + page * P, A + (page + 1) * P, ir=ir)
        assert rules(tb, ops + [op(tb, "msync", t0, 0, 3 * P)], f) == []


def test_msync_missing_a_page_or_out_of_order_is_found():
    tb = TraceBuilder()
    ops = [fmap(tb), written(tb, 0, 2 * P)]
    t0 = tb.tick()
    tb.window(PROT_PAGE, A + P, A + 2 * P).window(PROT_PAGE, A, A + P)
    assert rules(tb, ops + [op(tb, "msync", t0, 0, 2 * P)]) == ["unexpected", "missing"]


def test_msync_on_61_needs_invalidate_range_in_each_window():
    tb = TraceBuilder()
    ops = [fmap(tb), written(tb, 0, P)]
    t0 = tb.tick()
    tb.window(PROT_PAGE, A, A + P)
    assert rules(tb, ops + [op(tb, "msync", t0, 0, P)], V61) == ["invalidate-range"]


def test_writeback_of_a_clean_page_is_unexpected():
    tb = TraceBuilder()
    ops = [fmap(tb), written(tb, 0, P)]
    t0 = tb.tick()
    tb.window(PROT_PAGE, A, A + P)
    first = op(tb, "msync", t0, 0, P)
    t1 = tb.tick()
    tb.window(PROT_PAGE, A, A + P)    # cleaned already: writeback skips it
    assert rules(tb, ops + [first, op(tb, "fsync", t1)]) == ["unexpected"]


def test_a_dirty_page_that_is_not_mapped_is_written_back_without_a_window():
    tb = TraceBuilder()
    ops = [fmap(tb), written(tb, 0, P), written(tb, 8 * P, 2 * P, "pwrite")]
    t0 = tb.tick()
    tb.window(PROT_PAGE, A, A + P)
    assert rules(tb, ops + [op(tb, "fsync", t0)]) == []
    tb = TraceBuilder()
    ops = [fmap(tb), written(tb, 0, P), written(tb, 8 * P, 2 * P, "pwrite")]
    t0 = tb.tick()
    tb.window(PROT_PAGE, A, A + P).window(PROT_PAGE, A + 8 * P, A + 9 * P)
    assert rules(tb, ops + [op(tb, "fsync", t0)]) == ["unexpected"]


def test_pwrite_to_a_mapped_page_dirties_it_for_writeback():
    tb = TraceBuilder()
    ops = [fmap(tb), written(tb, 0, 2 * P)]
    t0 = tb.tick()
    tb.window(PROT_PAGE, A, A + P).window(PROT_PAGE, A + P, A + 2 * P)
    ops += [op(tb, "fsync", t0), written(tb, P, P, "pwrite")]
    t1 = tb.tick()
    assert rules(tb, ops + [op(tb, "fsync", t1)]) == ["missing"]


def test_fdontneed_clears_its_range_and_unmaps_the_pages():
    for f, ir in ((V612, False), (V61, True)):
        tb = TraceBuilder()
        ops = [fmap(tb), written(tb, 0, 4 * P)]
        t0 = tb.tick()
        tb.window(CLEAR, A + 2 * P, A + 4 * P, ir=ir)
        ops.append(op(tb, "fdontneed", t0, 2 * P, 2 * P))
        t1 = tb.tick()
        tb.window(PROT_PAGE, A, A + P, ir=ir).window(PROT_PAGE, A + P, A + 2 * P, ir=ir)
        assert rules(tb, ops + [op(tb, "fsync", t1)], f) == []


def test_fdontneed_without_its_clear_is_missing():
    tb = TraceBuilder()
    ops = [fmap(tb), written(tb, 0, 4 * P)]
    t0 = tb.tick()
    assert rules(tb, ops + [op(tb, "fdontneed", t0, 2 * P, 2 * P)]) == ["missing"]


def test_fverify_maps_every_page_below_the_size():
    tb = TraceBuilder()
    ops = [fmap(tb, 4 * P), written(tb, 0, 2 * P, "pwrite"), op(tb, "fverify", tb.tick())]
    t0 = tb.tick()
    tb.window(PROT_PAGE, A, A + P).window(PROT_PAGE, A + P, A + 2 * P)
    assert rules(tb, ops + [op(tb, "fsync", t0)]) == []


def test_fverify_bad_pages_is_a_data_finding():
    tb = TraceBuilder()
    ops = [fmap(tb), tb.op("fverify", tb.tick(), name="F", start=A, end=A + M, bad_pages=2)]
    assert rules(tb, ops) == ["data"]


def test_msync_leaving_page_0_dirty_and_mapped_is_refused():
    tb = TraceBuilder()
    ops = [fmap(tb), written(tb, 0, 2 * P), op(tb, "msync", tb.tick(), P, P)]
    with pytest.raises(ModelError, match="page 0"):
        rules(tb, ops)


def punch_ops(tb: TraceBuilder) -> list[Op]:
    return [fmap(tb), written(tb, 0, P), written(tb, 8 * P, 2 * P)]


def test_punch_on_61_writes_back_the_dirty_mapped_pages_of_the_range_then_clears_it():
    tb = TraceBuilder()
    ops = punch_ops(tb)
    t0 = tb.tick()
    tb.window(PROT_PAGE, A + 8 * P, A + 9 * P, ir=True).window(PROT_PAGE, A + 9 * P, A + 10 * P, ir=True)
    tb.window(CLEAR, A + 8 * P, A + 16 * P, ir=True)
    assert rules(tb, ops + [op(tb, "punch", t0, 8 * P, 8 * P)], V61) == []


def test_punch_on_61_without_the_writeback_is_missing_it():
    tb = TraceBuilder()
    ops = punch_ops(tb)
    t0 = tb.tick()
    tb.window(CLEAR, A + 8 * P, A + 16 * P, ir=True)
    assert rules(tb, ops + [op(tb, "punch", t0, 8 * P, 8 * P)], V61) == ["missing", "missing"]


def test_punch_on_612_only_clears_and_drops_the_pages():
    tb = TraceBuilder()
    ops = punch_ops(tb)
    t0 = tb.tick()
    tb.window(CLEAR, A + 8 * P, A + 16 * P)
    ops.append(op(tb, "punch", t0, 8 * P, 8 * P))
    t1 = tb.tick()
    tb.window(PROT_PAGE, A, A + P)          # the punched pages left the page cache: nothing else to clean
    assert rules(tb, ops + [op(tb, "fsync", t1)]) == []


def test_punch_on_612_with_a_writeback_window_is_unexpected():
    tb = TraceBuilder()
    ops = punch_ops(tb)
    t0 = tb.tick()
    tb.window(PROT_PAGE, A + 8 * P, A + 9 * P).window(CLEAR, A + 8 * P, A + 16 * P)
    assert rules(tb, ops + [op(tb, "punch", t0, 8 * P, 8 * P)]) == ["unexpected"]


def test_ftruncate_clears_from_the_new_end_to_the_mapping_end_twice():
    for f, ir in ((V612, False), (V61, True)):
        tb = TraceBuilder()
        ops = [fmap(tb)]
        t0 = tb.tick()
        tb.window(CLEAR, A + 512 * K, A + M, ir=ir).window(CLEAR, A + 512 * K, A + M, ir=ir)
        ops.append(op(tb, "ftruncate", t0, file_size=512 * K))
        t1 = tb.tick()                       # growing back: the VMA maps nothing past the old end
        assert rules(tb, ops + [op(tb, "ftruncate", t1, file_size=M)], f) == []


def test_ftruncate_with_one_clear_is_missing_the_second():
    tb = TraceBuilder()
    ops = [fmap(tb)]
    t0 = tb.tick()
    tb.window(CLEAR, A + 512 * K, A + M)
    assert rules(tb, ops + [op(tb, "ftruncate", t0, file_size=512 * K)]) == ["missing"]


def test_ftruncate_with_a_short_range_is_found():
    tb = TraceBuilder()
    ops = [fmap(tb)]
    t0 = tb.tick()
    tb.window(CLEAR, A + 512 * K, A + M - P).window(CLEAR, A + 512 * K, A + M)
    assert rules(tb, ops + [op(tb, "ftruncate", t0, file_size=512 * K)]) == ["unexpected", "missing"]


def test_truncated_pages_are_neither_dirty_nor_mapped():
    tb = TraceBuilder()
    ops = [fmap(tb), written(tb, 0, P), written(tb, 512 * K, P)]
    t0 = tb.tick()
    tb.window(CLEAR, A + 512 * K, A + M).window(CLEAR, A + 512 * K, A + M)
    ops.append(op(tb, "ftruncate", t0, file_size=512 * K))
    t1 = tb.tick()
    tb.window(PROT_PAGE, A, A + P)
    assert rules(tb, ops + [op(tb, "fsync", t1)]) == []


@pytest.mark.parametrize("kind", ["fmap", "fwrite", "pwrite", "fverify"])
def test_a_window_where_none_is_opened_is_unexpected(kind):
    tb = TraceBuilder()
    ops = [] if kind == "fmap" else [fmap(tb)]
    t0 = tb.tick()
    tb.window(CLEAR, A, A + P)
    last = (tb.op("fmap", t0, name="F", start=A, end=A + M, extra={"file_size": M}) if kind == "fmap"
            else op(tb, kind, t0, 0, P))
    assert rules(tb, ops + [last]) == ["unexpected"]
