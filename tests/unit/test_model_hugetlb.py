"""The hugetlb family's rules (harness/model/families/hugetlb.py): each with the trace the kernel's
source gives, and a broken one that fails with a named finding."""

import pytest

from harness.events import Event
from harness.model.contract import check_contract
from harness.model.families.hugetlb import HugeVma, widen
from harness.model.ops import ModelError, Op
from harness.model.versions import features_for
from tests.unit.tracebuilder import A, M, TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
CLEAR, UNMAP, PROT_VMA, PROT_PAGE = Event.CLEAR, Event.UNMAP, Event.PROTECTION_VMA, Event.PROTECTION_PAGE
G = 1 << 30
H = 2 * M
B = A + G          # the second mapping's slot


def hmap(tb: TraceBuilder, start: int, size: int, shared: bool, kind: str = "hmap") -> Op:
    return tb.op(kind, tb.tick(), start=start, end=start + size, extra={"shared": int(shared)})


def op(tb: TraceBuilder, kind: str, t0: int, start: int, length: int, **kw) -> Op:
    return tb.op(kind, t0, start=start, end=start + length, **kw)


def touch(tb: TraceBuilder, start: int, length: int) -> Op:
    return op(tb, "htouch", tb.tick(), start, length)


def rules(tb: TraceBuilder, ops: list[Op], f=V612) -> list[str]:
    return tb.rules(ops, f)


def nested(tb: TraceBuilder, outer: tuple[Event, int, int], inner: tuple[Event, int, int]) -> None:
    """6.1: an outer window with an inner one of its own, invalidate_range before each end."""
    tb.start(*outer).start(*inner).ir(*inner[1:]).end(*inner).ir(*outer[1:]).end(*outer)


# --- adjust_range_if_pmd_sharing_possible ----------------------------------------------------------

@pytest.mark.parametrize("vma, rng, widened", [
    (HugeVma(A, A + G, shared=True), (A + 4 * M, A + 6 * M), (A, A + G)),              # inside a spanned GiB
    (HugeVma(A, A + G, shared=False), (A + 4 * M, A + 6 * M), (A + 4 * M, A + 6 * M)),  # private: never
    (HugeVma(A, A + 8 * M, shared=True), (A + 4 * M, A + 6 * M), (A + 4 * M, A + 6 * M)),  # no whole GiB
    (HugeVma(A - H, A + G + H, shared=True), (A - H, A + H), (A - H, A + G)),  # start below the span stays
    (HugeVma(A, A + 2 * G, shared=True), (A + G - H, A + G + H), (A, A + 2 * G)),      # across two GiBs
])
def test_widen_is_adjust_range_if_pmd_sharing_possible(vma, rng, widened):
    assert widen(vma, *rng) == widened


# --- faults ----------------------------------------------------------------------------------------

def test_faults_open_no_window():
    tb = TraceBuilder()
    assert rules(tb, [hmap(tb, A, G, True, "hfile"), hmap(tb, B, G, True, "hfile"), touch(tb, A, 3 * H),
                      touch(tb, B, H), op(tb, "hverify", tb.tick(), B, 3 * H)]) == []


def test_a_window_during_a_fault_is_unexpected():
    tb = TraceBuilder()
    ops = [hmap(tb, A, 4 * M, False)]
    t0 = tb.tick()
    tb.window(CLEAR, A, A + H)
    assert rules(tb, ops + [op(tb, "htouch", t0, A, H)]) == ["unexpected"]


# --- MADV_DONTNEED ---------------------------------------------------------------------------------

def test_dontneed_in_a_shared_gib_is_widened_to_it():
    tb = TraceBuilder()
    ops = [hmap(tb, A, G, True, "hfile"), touch(tb, A, 2 * H)]
    t0 = tb.tick()
    tb.window(CLEAR, A, A + G)
    assert rules(tb, ops + [op(tb, "hdontneed", t0, A + H, H)]) == []


def test_dontneed_on_61_nests_the_unmap_of_unmap_hugepage_range():
    tb = TraceBuilder()
    ops = [hmap(tb, A, G, True, "hfile"), touch(tb, A, 2 * H)]
    t0 = tb.tick()
    nested(tb, (CLEAR, A, A + G), (UNMAP, A, A + G))
    assert rules(tb, ops + [op(tb, "hdontneed", t0, A + H, H)], V61) == []


def test_dontneed_on_61_without_the_nested_unmap_is_missing_it():
    tb = TraceBuilder()
    ops = [hmap(tb, A, G, True, "hfile"), touch(tb, A, 2 * H)]
    t0 = tb.tick()
    tb.window(CLEAR, A, A + G, ir=True)
    assert rules(tb, ops + [op(tb, "hdontneed", t0, A + H, H)], V61) == ["missing"]


def test_dontneed_not_widened_for_shared_pmds_is_found():
    tb = TraceBuilder()
    ops = [hmap(tb, A, G, True, "hfile"), touch(tb, A, 2 * H)]
    t0 = tb.tick()
    tb.window(CLEAR, A + H, A + 2 * H)
    assert rules(tb, ops + [op(tb, "hdontneed", t0, A + H, H)]) == ["missing", "unexpected"]


def test_dontneed_of_a_private_or_small_shared_mapping_is_exact():
    tb = TraceBuilder()
    ops = [hmap(tb, A, 8 * M, False), hmap(tb, B, 8 * M, True), touch(tb, A, 8 * M), touch(tb, B, 8 * M)]
    t0 = tb.tick()
    tb.window(CLEAR, A + H, A + 2 * H)
    ops.append(op(tb, "hdontneed", t0, A + H, H))
    t1 = tb.tick()
    tb.window(CLEAR, B + H, B + 2 * H)
    assert rules(tb, ops + [op(tb, "hdontneed", t1, B + H, H)]) == []


# --- munmap ----------------------------------------------------------------------------------------

def test_munmap_inside_a_shared_gib_unshares_it_then_unmaps_exactly():
    for f in (V612, V61):
        tb = TraceBuilder()
        ops = [hmap(tb, A, G, True, "hfile")]
        t0 = tb.tick()
        ir = f is V61
        tb.window(CLEAR, A, A + G, ir=ir)                    # hugetlb_split at A + 2M: hugetlb_unshare_pmds
        if ir:
            nested(tb, (UNMAP, A + H, A + 2 * H), (UNMAP, A + H, A + 2 * H))
        else:
            tb.window(UNMAP, A + H, A + 2 * H)
        assert rules(tb, ops + [op(tb, "hunmap", t0, A + H, H)], f) == []


def test_munmap_without_the_unshare_is_missing_it():
    tb = TraceBuilder()
    ops = [hmap(tb, A, G, True, "hfile")]
    t0 = tb.tick()
    tb.window(UNMAP, A + H, A + 2 * H)
    assert rules(tb, ops + [op(tb, "hunmap", t0, A + H, H)]) == ["missing"]


def test_munmap_of_a_private_mapping_has_no_unshare():
    tb = TraceBuilder()
    ops = [hmap(tb, A, G, False)]
    t0 = tb.tick()
    tb.window(CLEAR, A, A + G).window(UNMAP, A + H, A + 2 * H)
    assert rules(tb, ops + [op(tb, "hunmap", t0, A + H, H)]) == ["unexpected"]


def test_after_the_split_nothing_is_widened_any_more():
    tb = TraceBuilder()
    ops = [hmap(tb, A, G, True, "hfile")]
    t0 = tb.tick()
    tb.window(CLEAR, A, A + G).window(UNMAP, A + H, A + 2 * H)
    ops.append(op(tb, "hunmap", t0, A + H, H))
    t1 = tb.tick()
    tb.window(CLEAR, A + 4 * H, A + 5 * H)                  # [A + 4M, A + 1G) no longer holds its GiB
    assert rules(tb, ops + [op(tb, "hdontneed", t1, A + 4 * H, H)]) == []


# --- mprotect --------------------------------------------------------------------------------------

def test_mprotect_of_a_whole_shared_vma_protects_it_without_a_split():
    tb = TraceBuilder()
    ops = [hmap(tb, A, G, True, "hfile")]
    t0 = tb.tick()
    tb.window(PROT_VMA, A, A + G)
    assert rules(tb, ops + [op(tb, "hprotect", t0, A, G, prot="r")]) == []


def test_mprotect_of_a_piece_splits_twice_and_protects_the_piece():
    tb = TraceBuilder()
    ops = [hmap(tb, A, G, True, "hfile")]
    t0 = tb.tick()
    tb.window(CLEAR, A, A + G).window(PROT_VMA, A + H, A + 2 * H)
    ops.append(op(tb, "hprotect", t0, A + H, H, prot="r"))
    t1 = tb.tick()                                        # the same protection again: nothing at all
    assert rules(tb, ops + [op(tb, "hprotect", t1, A + H, H, prot="r")]) == []


def test_mprotect_widened_or_missing_is_found():
    tb = TraceBuilder()
    ops = [hmap(tb, A, 8 * M, False)]
    t0 = tb.tick()
    tb.window(PROT_VMA, A, A + 8 * M)
    assert rules(tb, ops + [op(tb, "hprotect", t0, A + H, H, prot="r")]) == ["missing", "unexpected"]


def test_mprotect_on_61_is_followed_by_the_nested_gathers_fullmm_flush():
    tb = TraceBuilder()
    ops = [hmap(tb, A, 8 * M, False)]
    t0 = tb.tick()
    tb.window(PROT_VMA, A, A + 8 * M, ir=True).ir(2**64 - 1, 2**64 - 1)
    assert rules(tb, ops + [op(tb, "hprotect", t0, A, 8 * M, prot="r")], V61) == []


def test_a_fullmm_flush_with_no_window_before_it_is_a_finding():
    tb = TraceBuilder()
    tb.ir(2**64 - 1, 2**64 - 1)
    assert [f.rule for f in check_contract(tb.records, V61).findings] == ["invalidate-range"]


# --- fork and COW ----------------------------------------------------------------------------------

def cow_ops(tb: TraceBuilder) -> list[Op]:
    return [hmap(tb, A, 4 * M, False), hmap(tb, B, 4 * M, False), hmap(tb, B + G, G, True, "hfile"),
            touch(tb, A, 4 * M), touch(tb, B + G, H)]


def hcow(tb: TraceBuilder, t0: int, free: int = 4, bad: int = 0) -> Op:
    return op(tb, "hcow", t0, A + H, H, extra={"free_huge": free}, bad_pages=bad)


def test_fork_copies_each_private_vma_with_pages_then_the_write_copies_the_page():
    for f, ir in ((V612, False), (V61, True)):
        tb = TraceBuilder()
        ops = cow_ops(tb)
        t0 = tb.tick()
        tb.window(PROT_PAGE, 0x400000, 0x401000, ir=ir)      # the program's own data: allowed
        tb.window(CLEAR, A, A + 4 * M, ir=ir)                # B has no anon_vma, the shared file no copy
        tb.window(CLEAR, 0x7FFF0000, 0x7FFF1000, ir=ir)      # the parent's stack COW: allowed
        tb.window(CLEAR, A + H, A + 2 * H, ir=ir)
        assert rules(tb, ops + [hcow(tb, t0)], f) == []


def test_a_cow_without_hugetlb_wp_is_missing_it():
    tb = TraceBuilder()
    ops = cow_ops(tb)
    t0 = tb.tick()
    tb.window(CLEAR, A, A + 4 * M)
    assert rules(tb, ops + [hcow(tb, t0)]) == ["missing"]


def test_fork_copying_a_vma_without_pages_is_unexpected():
    tb = TraceBuilder()
    ops = cow_ops(tb)
    t0 = tb.tick()
    tb.window(CLEAR, A, A + 4 * M).window(CLEAR, B, B + 4 * M).window(CLEAR, A + H, A + 2 * H)
    assert rules(tb, ops + [hcow(tb, t0)]) == ["unexpected"]


def test_the_childs_copy_is_a_data_finding():
    tb = TraceBuilder()
    ops = cow_ops(tb)
    t0 = tb.tick()
    tb.window(CLEAR, A, A + 4 * M).window(CLEAR, A + H, A + 2 * H)
    assert rules(tb, ops + [hcow(tb, t0, bad=3)]) == ["data"]


def test_a_cow_with_the_pool_exhausted_is_refused():
    tb = TraceBuilder()
    with pytest.raises(ModelError, match="unreserved"):
        rules(tb, cow_ops(tb) + [hcow(tb, tb.tick(), free=0)])


def test_after_the_child_exits_writes_reuse_the_page():
    tb = TraceBuilder()
    ops = cow_ops(tb)
    t0 = tb.tick()
    tb.window(CLEAR, A, A + 4 * M).window(CLEAR, A + H, A + 2 * H)
    ops.append(hcow(tb, t0))
    t1 = tb.tick()
    tb.window(CLEAR, A, A + H)
    assert rules(tb, ops + [op(tb, "htouch", t1, A, H)]) == ["unexpected"]


# --- mremap ----------------------------------------------------------------------------------------

def test_mremap_of_a_shared_gib_moves_widened_then_unshares_and_unmaps():
    for f in (V612, V61):
        tb = TraceBuilder()
        ops = [hmap(tb, A, G, True, "hfile")]
        t0 = tb.tick()
        ir = f is V61
        tb.window(CLEAR, A, A + G, ir=ir)                    # move_hugetlb_page_tables, widened
        tb.window(CLEAR, A, A + G, ir=ir)                    # the old range's split: unshare
        if ir:
            nested(tb, (UNMAP, A + H, A + 2 * H), (UNMAP, A + H, A + 2 * H))
        else:
            tb.window(UNMAP, A + H, A + 2 * H)
        moved = op(tb, "hmremap", t0, A + H, H, extra={"new_start": B, "new_end": B + H})
        assert rules(tb, ops + [moved], f) == []


def test_mremap_of_a_private_range_moves_exactly():
    tb = TraceBuilder()
    ops = [hmap(tb, A, 4 * M, False), touch(tb, A, 4 * M)]
    t0 = tb.tick()
    tb.window(CLEAR, A, A + 4 * M).window(UNMAP, A, A + 4 * M)
    ops.append(op(tb, "hmremap", t0, A, 4 * M, extra={"new_start": B, "new_end": B + 4 * M}))
    t1 = tb.tick()
    tb.window(CLEAR, B + H, B + 2 * H)                        # the moved VMA: its own range now
    assert rules(tb, ops + [op(tb, "hdontneed", t1, B + H, H)]) == []


def test_mremap_without_the_move_window_is_missing_it():
    tb = TraceBuilder()
    ops = [hmap(tb, A, 4 * M, False), touch(tb, A, 4 * M)]
    t0 = tb.tick()
    tb.window(UNMAP, A, A + 4 * M)
    moved = op(tb, "hmremap", t0, A, 4 * M, extra={"new_start": B, "new_end": B + 4 * M})
    assert rules(tb, ops + [moved]) == ["missing"]


def test_unaligned_hugetlb_operations_are_refused():
    tb = TraceBuilder()
    with pytest.raises(ModelError, match="2 MiB"):
        rules(tb, [hmap(tb, A, 4 * M, False), op(tb, "hunmap", tb.tick(), A + 4096, H)])


def test_nonblocking_hugetlb_windows_break_the_contract():
    tb = TraceBuilder()
    ops = [hmap(tb, A, 4 * M, False)]
    t0 = tb.tick()
    tb.start(UNMAP, A, A + H, blockable=False).end(UNMAP, A, A + H, blockable=False)
    assert "blockable" in rules(tb, ops + [op(tb, "hunmap", t0, A, H)])


# --- COW with the pool empty: the probe on the child -----------------------------------------------

def steal_ops(tb: TraceBuilder) -> list[Op]:
    return [hmap(tb, A, H, False), touch(tb, A, H), hmap(tb, B, 8 * M, False, "hfill")]


def hsteal(tb: TraceBuilder, t0: int, free: int = 0, child_kb: int = 0) -> Op:
    return op(tb, "hsteal", t0, A, H, extra={"free_huge": free, "child_huge_kb": child_kb})


def test_the_owners_write_unmaps_the_page_from_the_child():
    for f, event, ir in ((V612, CLEAR, False), (V61, UNMAP, True)):
        tb = TraceBuilder()
        ops = steal_ops(tb)
        t0 = tb.tick()
        tb.window(event, A, A + H, ir=ir)
        assert rules(tb, ops + [hsteal(tb, t0)], f) == []


def test_the_steal_with_the_other_versions_window_is_found():
    tb = TraceBuilder()
    ops = steal_ops(tb)
    t0 = tb.tick()
    tb.window(UNMAP, A, A + H)
    assert rules(tb, ops + [hsteal(tb, t0)]) == ["missing", "unexpected"]


def test_a_child_still_mapping_the_page_is_a_steal_finding():
    tb = TraceBuilder()
    ops = steal_ops(tb)
    t0 = tb.tick()
    tb.window(CLEAR, A, A + H)
    assert rules(tb, ops + [hsteal(tb, t0, child_kb=2048)]) == ["steal"]


def test_a_steal_with_a_free_page_is_refused():
    tb = TraceBuilder()
    with pytest.raises(ModelError, match="empty the pool"):
        rules(tb, steal_ops(tb) + [hsteal(tb, tb.tick(), free=1)])


def test_hfill_opens_no_window():
    tb = TraceBuilder()
    ops = [hmap(tb, A, H, False)]
    t0 = tb.tick()
    tb.window(CLEAR, B, B + 8 * M)
    assert rules(tb, ops + [tb.op("hfill", t0, start=B, end=B + 8 * M, extra={"shared": 0})]) == ["unexpected"]
