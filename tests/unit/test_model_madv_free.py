"""MADV_FREE, lazy-free reclaim and MADV_PAGEOUT in the model (harness/model/families/madv_free.py):
each rule with the trace the kernel's source gives, and the same trace broken."""

import pytest

from harness.events import Callback, Event
from harness.model.ops import ModelError, Op, parse_ops
from harness.model.versions import features_for
from tests.unit.tracebuilder import A, K, M, TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
CLEAR, UNMAP, PROT_VMA = Event.CLEAR, Event.UNMAP, Event.PROTECTION_VMA
BOTH = pytest.mark.parametrize("f", [V61, V612], ids=["6.1", "6.12"])


def finish(tb: TraceBuilder, ops: list[Op], f) -> list[str]:
    return tb.rules(ops, f)


def mapping(tb: TraceBuilder, size: int, thp: bool = False, name: str = "A") -> Op:
    return tb.mapping(size, thp, name)


def bitmap(pages: list[int], key: str, start: int = A) -> dict[str, int]:
    words = [0] * 8
    for p in pages:
        i = (p - start) // (4 * K)
        words[i // 64] |= 1 << (i % 64)
    return {f"{key}_{w}": words[w] for w in range(8)}


# ---- free ----------------------------------------------------------------------------------------

def three_vmas(tb: TraceBuilder, f) -> list[Op]:
    """1 MiB with one page made read-only in the middle: three VMAs (no 2 MiB block inside the VMA)."""
    m = mapping(tb, M)
    t0 = tb.tick()
    tb.window(PROT_VMA, A + 256 * K, A + 260 * K, ir=f.invalidate_range)
    return [m, tb.op("mprotect", t0, name="A", start=A + 256 * K, end=A + 260 * K, prot="r")]


def free_three_vmas(f, drop: int = -1, whole: bool = False, ir: bool = True) -> list[str]:
    tb = TraceBuilder()
    ops = three_vmas(tb, f)
    t0 = tb.tick()
    parts = [(A, A + M)] if whole else [(A, A + 256 * K), (A + 256 * K, A + 260 * K), (A + 260 * K, A + M)]
    for i, (s, e) in enumerate(parts):
        if i != drop:
            tb.window(CLEAR, s, e, ir=f.invalidate_range and ir)
    return finish(tb, ops + [tb.op("free", t0, name="A", start=A, end=A + M)], f)


@BOTH
def test_free_opens_one_clear_per_vma(f):
    assert free_three_vmas(f) == []


def test_free_missing_a_vma_or_spanning_them_is_wrong():
    assert free_three_vmas(V612, drop=1) == ["missing"]
    assert free_three_vmas(V612, whole=True) == ["missing", "missing", "missing", "unexpected"]


def test_free_ends_with_invalidate_range_on_6_1():
    assert set(free_three_vmas(V61, ir=False)) == {"invalidate-range"}


def free_thp(f, nested: bool = True, outer_nested_whole: bool = False, huge_kb: int = 2048) -> list[str]:
    """4 MiB of THP: the first block freed whole (no nested window), the second in part (split)."""
    tb = TraceBuilder()
    ir = f.invalidate_range
    m = mapping(tb, 4 * M, thp=True)
    t0 = tb.tick()
    tb.start(CLEAR, A, A + 2 * M)
    if outer_nested_whole:
        tb.window(CLEAR, A, A + 2 * M)
    if ir:
        tb.ir(A, A + 2 * M)
    tb.end(CLEAR, A, A + 2 * M)
    whole = tb.op("free", t0, name="A", start=A, end=A + 2 * M, anon_huge_kb=4096)
    t0 = tb.tick()
    tb.start(CLEAR, A + 3 * M, A + 3 * M + 512 * K)
    if nested:
        tb.window(CLEAR, A + 2 * M, A + 4 * M)                       # split_huge_pmd_address(freeze)
        tb.window(CLEAR, A + 2 * M, A + 4 * M, ir=ir)                # try_to_migrate_one
    if ir:
        tb.ir(A + 3 * M, A + 3 * M + 512 * K)
    tb.end(CLEAR, A + 3 * M, A + 3 * M + 512 * K)
    part = tb.op("free", t0, name="A", start=A + 3 * M, end=A + 3 * M + 512 * K, anon_huge_kb=huge_kb)
    return finish(tb, [m, whole, part], f)


@BOTH
def test_free_keeps_a_whole_thp_and_splits_a_partial_one_inside_its_window(f):
    assert free_thp(f) == []


def test_free_of_part_of_a_thp_without_the_split_is_wrong():
    assert free_thp(V612, nested=False) == ["missing", "missing"]


def test_free_of_a_whole_thp_splits_nothing():
    assert free_thp(V612, outer_nested_whole=True) == ["unexpected"]


def test_free_thp_state_afterwards():
    assert free_thp(V612, huge_kb=4096) == ["thp-state"]


def test_free_over_a_pte_mapped_thp_is_refused():
    """mprotect splits the PMD, not the folio: MADV_FREE would split_folio from the PTE walk."""
    tb = TraceBuilder()
    ops = [mapping(tb, 4 * M, thp=True), tb.op("mprotect", tb.tick(), name="A", start=A + M, end=A + M + 4 * K,
                                               prot="r"),
           tb.op("free", tb.tick(), name="A", start=A + M + 4 * K, end=A + M + 8 * K)]
    with pytest.raises(ModelError, match="PTE-mapped large folio"):
        finish(tb, ops, V612)


def test_a_write_after_free_opens_no_window():
    tb = TraceBuilder()
    m = mapping(tb, M)
    t0 = tb.tick()
    tb.window(CLEAR, A, A + M)
    free = tb.op("free", t0, name="A", start=A, end=A + M)
    t0 = tb.tick()
    tb.window(CLEAR, A + 8 * K, A + 12 * K)
    assert finish(tb, [m, free, tb.op("write", t0, name="A", start=A + 8 * K, end=A + 12 * K, value=9)],
                  V612) == ["unexpected"]


# ---- freereclaim -----------------------------------------------------------------------------------

def reclaim(f, *, lru_gen: int = 0, gone=None, windowless: int = 0, no_ir: bool = False, unaged: int = 0,
            young=None, not_lazy: bool = False, extra_window=None, test_young: bool = False) -> list[str]:
    """512 KiB freed, then reclaimed: every page but two discarded (each under its 4 KiB CLEAR after a
    young callback on it)."""
    tb = TraceBuilder()
    size = 512 * K
    m = mapping(tb, M)
    t0 = tb.tick()
    lazy_end = A + size if not not_lazy else A + size - 4 * K
    tb.window(CLEAR, A, lazy_end, ir=f.invalidate_range)
    free = tb.op("free", t0, name="A", start=A, end=lazy_end)
    pages = list(range(A, A + size, 4 * K)) if gone is None else gone
    discarded = [p for p in pages if p not in (A + 8 * K, A + 64 * K)]
    mglru = lru_gen & 1 and f.mglru_clear_young
    young = young or (Callback.CLEAR_YOUNG if mglru else Callback.CLEAR_FLUSH_YOUNG)
    t0 = tb.tick()
    for i, p in enumerate(discarded):
        if i >= unaged:
            tb.add(young, p, p + 4 * K)
        if i < windowless:
            continue
        tb.start(CLEAR, p, p + 4 * K)
        if f.invalidate_range and not no_ir:
            tb.ir(p, p + 4 * K).ir(p, p + 4 * K)
        tb.end(CLEAR, p, p + 4 * K)
    if extra_window:
        tb.window(*extra_window)
    if test_young:
        tb.add(Callback.TEST_YOUNG, A, 0)
    op = tb.op("freereclaim", t0, name="A", start=A, end=A + M, lru_gen=lru_gen, errno=11,
               extra={"present": 2, "swapped": 0, **bitmap(discarded, "gone")})
    return finish(tb, [m, free, op], f)


@pytest.mark.parametrize("f, lru_gen", [(V61, 0), (V61, 7), (V612, 0), (V612, 7)])
def test_reclaim_discards_lazy_pages_under_their_window_after_aging(f, lru_gen):
    assert reclaim(f, lru_gen=lru_gen) == []


def test_a_discarded_page_without_its_window_is_wrong():
    assert reclaim(V612, windowless=3) == ["reclaim"] * 3


def test_a_discarded_page_without_its_invalidate_range_on_6_1_is_wrong():
    assert set(reclaim(V61, no_ir=True)) == {"invalidate-range"}


def test_a_page_is_aged_before_it_is_discarded():
    assert reclaim(V612, lru_gen=7, unaged=1) == ["aging"]


def test_the_young_callback_follows_the_version():
    assert set(reclaim(V612, lru_gen=7, young=Callback.CLEAR_FLUSH_YOUNG)) == {"aging"}
    assert set(reclaim(V61, lru_gen=7, young=Callback.CLEAR_YOUNG)) == {"aging"}


def test_no_test_young_from_reclaim():
    assert reclaim(V612, test_young=True) == ["aging"]


def test_a_discarded_page_madv_free_never_freed_is_lost_data():
    assert reclaim(V612, not_lazy=True) == ["unexpected", "reclaim"]


def test_only_4k_clears_during_reclaim():
    assert reclaim(V612, extra_window=(UNMAP, A + M, A + 2 * M)) == ["unexpected"]


def test_a_reclaim_that_discards_nothing_is_reported():
    assert reclaim(V612, gone=[]) == ["reclaim"]


# ---- pageout -------------------------------------------------------------------------------------

def pageout(f, *, cold: bool = True, swapped=None, young=None, second: bool = False, no_window: int = 0,
            aged: bool = True, wide: bool = False) -> list[str]:
    """cpu 0, 256 KiB mapped, MADV_COLD, MADV_PAGEOUT: each page under its 4 KiB CLEAR, after
    clear_flush_young on 6.1 and with no young callback on 6.12."""
    tb = TraceBuilder()
    size = 256 * K
    ops = [tb.op("cpu", tb.tick(), cpu=0), mapping(tb, size, name="P")]
    if cold:
        t0 = tb.tick()
        if f.invalidate_range:
            tb.ir(A, A + size)
        ops.append(tb.op("cold", t0, name="P", start=A, end=A + size))
    pages = list(range(A, A + size, 4 * K)) if swapped is None else swapped
    t0 = tb.tick()
    for i, p in enumerate(pages):
        if aged and f.pageout_checks_references:
            tb.add(young or Callback.CLEAR_FLUSH_YOUNG, p, p + 4 * K)
        elif young:
            tb.add(young, p, p + 4 * K)
        if i < no_window:
            continue
        tb.window(CLEAR, p, p + 4 * K, ir=f.invalidate_range)
    if second:
        tb.window(CLEAR, A, A + 4 * K, ir=f.invalidate_range)
    if wide:
        tb.window(CLEAR, A, A + 2 * M)
    ops.append(tb.op("pageout", t0, name="P", start=A, end=A + size, extra=bitmap(pages, "swapped")))
    return finish(tb, ops, f)


@BOTH
def test_pageout_unmaps_each_swapped_page_under_its_window(f):
    assert pageout(f) == []


def test_pageout_ages_first_on_6_1_only():
    assert pageout(V61, aged=False) == ["aging"] * 64
    assert set(pageout(V612, young=Callback.CLEAR_FLUSH_YOUNG)) == {"aging"}


def test_a_swapped_page_without_its_window_is_wrong():
    assert pageout(V612, no_window=2) == ["reclaim", "reclaim"]


def test_one_window_per_page_and_only_4k_clears():
    assert pageout(V612, second=True) == ["unexpected"]
    assert pageout(V612, wide=True) == ["unexpected"]


def test_a_pageout_that_swaps_nothing_is_reported():
    assert pageout(V612, swapped=[]) == ["reclaim"]


def test_pageout_over_young_ptes_on_6_1_is_refused():
    with pytest.raises(ModelError, match="young PTEs"):
        pageout(V61, cold=False)
    assert pageout(V612, cold=False) == []


def test_the_bitmaps_are_guest_data_and_name_pages_of_the_range():
    lines = [{"op": "start", "pid": 9, "t0": 1},
             {"op": "pageout", "name": "P", "start": A, "end": A + 8 * K, "t0": 2, "t1": 3,
              **{f"swapped_{w}": 0 for w in range(8)}, "swapped_0": 0b100}]
    _, [op] = parse_ops(lines)
    tb = TraceBuilder()
    with pytest.raises(ModelError, match="past the range's end"):
        finish(tb, [tb.op("cpu", 0, cpu=0), Op("map", 0, 1, name="P", start=A, end=A + 8 * K), op], V612)
