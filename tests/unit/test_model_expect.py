"""Per-operation expectations: the specification's trace passes, a wrong one fails with a named finding."""

import pytest

from harness.events import Event
from harness.model.expect import _protection_chunks, expectations, judge
from harness.model.ops import AddressSpace, ModelError, Op, parse_ops
from harness.model.versions import GIB, features_for
from tests.unit.tracebuilder import A, K, M, PID, TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
CLEAR, UNMAP, PROT_VMA, PROT_PAGE = Event.CLEAR, Event.UNMAP, Event.PROTECTION_VMA, Event.PROTECTION_PAGE


def mapping(tb: TraceBuilder, size: int, thp: bool = False, name: str = "A", start: int = A) -> Op:
    return tb.mapping(size, thp, name, start)


def run(tb: TraceBuilder, ops: list[Op], f=V612) -> list[str]:
    return tb.rules(ops, f)


def test_munmap_unmaps_exactly_the_range_after_one_split_clear():
    for f, ir in ((V612, False), (V61, True)):
        tb = TraceBuilder()
        m = mapping(tb, 4 * M)
        t0 = tb.tick()
        tb.window(CLEAR, A, A + 2 * M).window(UNMAP, A + M, A + M + 4 * K, ir=ir)
        assert run(tb, [m, tb.op("munmap", t0, name="A", start=A + M, end=A + M + 4 * K)], f) == []


def test_munmap_with_a_wrong_range_is_missing_and_unexpected():
    tb = TraceBuilder()
    m = mapping(tb, 4 * M)
    t0 = tb.tick()
    tb.window(CLEAR, A, A + 2 * M).window(UNMAP, A + M, A + M + 8 * K)
    assert run(tb, [m, tb.op("munmap", t0, name="A", start=A + M, end=A + M + 4 * K)]) == ["missing", "unexpected"]


def test_munmap_without_the_split_clear_is_missing_it():
    tb = TraceBuilder()
    m = mapping(tb, 4 * M)
    t0 = tb.tick()
    tb.window(UNMAP, A + M, A + M + 4 * K)
    assert run(tb, [m, tb.op("munmap", t0, name="A", start=A + M, end=A + M + 4 * K)]) == ["missing"]


def test_munmap_boundaries_in_two_blocks_split_twice_and_aligned_ones_never():
    tb = TraceBuilder()
    m = mapping(tb, 8 * M)
    t0 = tb.tick()
    tb.window(CLEAR, A, A + 2 * M).window(CLEAR, A + 2 * M, A + 4 * M).window(UNMAP, A + M, A + 3 * M)
    first = tb.op("munmap", t0, name="A", start=A + M, end=A + 3 * M)
    t1 = tb.tick()
    tb.window(UNMAP, A + 6 * M, A + 8 * M)
    assert run(tb, [m, first, tb.op("munmap", t1, name="A", start=A + 6 * M, end=A + 8 * M)]) == []


def three_vmas(tb: TraceBuilder) -> list[Op]:
    """A 4 MiB mapping with [A+1M, A+1M+64K) mprotected read-only: three VMAs."""
    m = mapping(tb, 4 * M)
    t0 = tb.tick()
    tb.window(CLEAR, A, A + 2 * M).window(PROT_VMA, A + M, A + M + 64 * K)
    return [m, tb.op("mprotect", t0, name="A", start=A + M, end=A + M + 64 * K, prot="r")]


def dontneed_across(tb: TraceBuilder, t0: int) -> Op:
    return tb.op("dontneed", t0, name="A", start=A + M - 4 * K, end=A + M + 68 * K)


def test_dontneed_gives_one_clear_per_vma():
    tb = TraceBuilder()
    ops = three_vmas(tb)
    t0 = tb.tick()
    tb.window(CLEAR, A + M - 4 * K, A + M).window(CLEAR, A + M, A + M + 64 * K).window(CLEAR, A + M + 64 * K, A + M + 68 * K)
    assert run(tb, ops + [dontneed_across(tb, t0)]) == []


def test_dontneed_as_one_clear_across_vmas_is_wrong():
    tb = TraceBuilder()
    ops = three_vmas(tb)
    t0 = tb.tick()
    tb.window(CLEAR, A + M - 4 * K, A + M + 68 * K)
    assert run(tb, ops + [dontneed_across(tb, t0)]) == ["missing", "missing", "missing", "unexpected"]


@pytest.mark.parametrize("nested, anon_huge_kb, findings", [
    (True, 2048, []),                              # the specification: outer, inner, inner end, outer end
    (False, 2048, ["missing", "unexpected"]),      # the 2 MiB CLEAR beside the outer window, not inside
    (True, 4096, ["thp-state"]),                   # smaps says the block is still PMD-mapped
])
def test_dontneed_in_a_pmd_mapped_thp(nested, anon_huge_kb, findings):
    tb = TraceBuilder()
    m = mapping(tb, 4 * M, thp=True)
    t0 = tb.tick()
    if nested:
        tb.start(CLEAR, A + 4 * K, A + 8 * K).window(CLEAR, A, A + 2 * M).end(CLEAR, A + 4 * K, A + 8 * K)
    else:
        tb.window(CLEAR, A, A + 2 * M).window(CLEAR, A + 4 * K, A + 8 * K)
    op = Op("dontneed", t0, tb.tick(), name="A", start=A + 4 * K, end=A + 8 * K, anon_huge_kb=anon_huge_kb)
    assert sorted(run(tb, [m, op])) == findings


def test_mprotect_to_the_same_protection_is_silent():
    tb = TraceBuilder()
    m = mapping(tb, 4 * M)
    t0 = tb.tick()
    tb.window(PROT_VMA, A, A + 4 * K)
    assert run(tb, [m, tb.op("mprotect", t0, name="A", start=A, end=A + 4 * K, prot="rw")]) == ["unexpected"]


def test_mprotect_on_6_1_wants_invalidate_range_inside():
    tb = TraceBuilder()
    m = mapping(tb, 4 * M)
    t0 = tb.tick()
    tb.window(CLEAR, A, A + 2 * M).window(PROT_VMA, A + M, A + M + 4 * K)
    assert run(tb, [m, tb.op("mprotect", t0, name="A", start=A + M, end=A + M + 4 * K, prot="r")], V61) == \
        ["invalidate-range"]


def test_mprotect_chunking_differs_between_6_1_and_6_12():
    aspace = AddressSpace()
    aspace.map(Op("map", 0, 0, name="A", start=A, end=A + 3 * GIB))
    s, e = A + 4 * K, A + 2 * GIB + 4 * K
    assert _protection_chunks(s, e, aspace, V61) == [(s, A + GIB), (A + GIB, A + 2 * GIB), (A + 2 * GIB, e)]
    assert _protection_chunks(s, e, aspace, V612) == [(s, e)]


def test_mprotect_on_6_1_starts_at_the_first_populated_pmd():
    aspace = AddressSpace()
    aspace.map(Op("map", 0, 0, name="A", start=A, end=A + 8 * M))
    aspace.populated_pmds.discard(A)
    assert _protection_chunks(A + 4 * K, A + 4 * M, aspace, V61) == [(A + 2 * M, A + 4 * M)]
    assert _protection_chunks(A + 4 * K, A + 4 * M, aspace, V612) == [(A + 4 * K, A + 4 * M)]
    aspace.populated_pmds.clear()
    assert _protection_chunks(A + 4 * K, A + 4 * M, aspace, V61) == []


def test_debugfs_split_of_a_folio_across_two_vmas():
    tb = TraceBuilder()
    m = mapping(tb, 4 * M, thp=True)
    t0 = tb.tick()
    tb.window(CLEAR, A + 2 * M, A + 4 * M).window(PROT_VMA, A + 2 * M, A + 2 * M + 8 * K)
    mp = Op("mprotect", t0, tb.tick(), name="A", start=A + 2 * M, end=A + 2 * M + 8 * K, prot="r", anon_huge_kb=2048)
    t1 = tb.tick()
    tb.window(CLEAR, A, A + 2 * M).window(CLEAR, A, A + 2 * M)              # PMD-mapped folio, one VMA
    tb.window(CLEAR, A + 2 * M, A + 4 * M).window(CLEAR, A + 2 * M, A + 2 * M + 8 * K)
    tb.window(CLEAR, A + 2 * M, A + 4 * M).window(CLEAR, A + 2 * M + 8 * K, A + 4 * M)
    split = Op("split", t1, tb.tick(), name="A", start=A, end=A + 4 * M, anon_huge_kb=0)
    assert run(tb, [m, mp, split]) == []


def test_debugfs_split_missing_the_migrate_clear():
    tb = TraceBuilder()
    m = mapping(tb, 2 * M, thp=True)
    t0 = tb.tick()
    tb.window(CLEAR, A, A + 2 * M)
    assert run(tb, [m, Op("split", t0, tb.tick(), name="A", start=A, end=A + 2 * M, anon_huge_kb=0)]) == ["missing"]


def cow_trace(f, pte: bool, ir: bool) -> tuple[TraceBuilder, list[Op]]:
    tb = TraceBuilder()
    m = mapping(tb, M)
    t0 = tb.tick()
    stack = (0x7FFF0000, 0x7FFF2000)
    tb.window(PROT_PAGE, 0x400000, 0x401000, ir=ir).window(PROT_PAGE, A, A + M, ir=ir)
    tb.window(PROT_PAGE, *stack, ir=ir)
    t_fork = tb.tick()
    tb.window(CLEAR, stack[0], stack[0] + 4 * K, ir=ir, pte=stack[0] if pte else None)
    tb.window(CLEAR, A + 12 * K, A + 16 * K, ir=ir, pte=A + 12 * K if pte else None)
    cow = Op("cow", t0, tb.tick(), name="A", start=A + 12 * K, end=A + 16 * K, t_fork=t_fork,
             private_vmas=((0x400000, 0x401000), (A, A + M), stack))
    return tb, [m, cow]


def test_cow_on_6_1_has_change_pte_and_invalidate_range_inside():
    tb, ops = cow_trace(V61, pte=True, ir=True)
    assert run(tb, ops, V61) == []


def test_cow_on_6_1_without_change_pte_fails():
    tb, ops = cow_trace(V61, pte=False, ir=True)
    assert run(tb, ops, V61) == ["change-pte"]


def test_cow_on_6_12_has_neither():
    tb, ops = cow_trace(V612, pte=False, ir=False)
    assert run(tb, ops, V612) == []
    tb, ops = cow_trace(V612, pte=True, ir=False)
    assert "change-pte" in run(tb, ops, V612)


def test_cow_without_fork_protection_of_the_mapping_fails():
    tb, ops = cow_trace(V612, pte=False, ir=False)
    del tb.records[2:4]   # the PROTECTION_PAGE of the workload's own mapping
    for i, r in enumerate(tb.records):
        tb.records[i] = r.__class__(**{**r.__dict__, "seq": i + 1})
    assert run(tb, ops, V612) == ["missing"]


def test_release_before_the_exit_line_is_a_finding():
    tb = TraceBuilder()
    m = mapping(tb, M)
    tb.release()
    ops = [m, tb.op("exit", tb.tick())]
    assert [x.rule for x in judge(tb.records, ops, PID, V612).findings] == ["release"]


def test_callbacks_of_other_tasks_are_background():
    tb = TraceBuilder()
    m = mapping(tb, 2 * M, thp=True)
    t0 = tb.tick()
    tb.window(CLEAR, A, A + 2 * M, pid=PID + 5)       # khugepaged, say
    op = Op("touch", t0, tb.tick(), name="A", start=A, end=A + 4 * K)
    judgement = judge(tb.records + [], [m, op], PID, V612)
    assert judgement.findings == [] and len(judgement.background) == 2


def test_merging_vmas_is_refused_not_guessed():
    tb = TraceBuilder()
    ops = [mapping(tb, 4 * M), Op("mprotect", 0, 0, name="A", start=A, end=A + 4 * K, prot="r"),
           Op("mprotect", 0, 0, name="A", start=A, end=A + 4 * K, prot="rw")]
    with pytest.raises(ModelError, match="would merge"):
        expectations(ops, V612)


def test_parse_ops_from_workload_lines():
    pid, ops = parse_ops([{"op": "start", "pid": 5, "t0": 1},
                          {"op": "map", "name": "A", "start": A, "end": A + M, "thp": False, "t0": 2, "t1": 3},
                          {"op": "cow-vmas", "private_vmas": [[A, A + M]]},
                          {"op": "cow", "name": "A", "start": A, "end": A + 4096, "child": 6, "t0": 4,
                           "t_fork": 5, "t_write": 6, "t1": 7},
                          {"op": "exit", "pid": 5, "t0": 8}])
    assert pid == 5 and [o.kind for o in ops] == ["map", "cow", "exit"]
    assert ops[1].private_vmas == ((A, A + M),) and ops[1].child == 6
    with pytest.raises(ModelError, match="munmap failed: munmap: Invalid argument"):
        parse_ops([{"op": "start", "pid": 5}, {"op": "munmap", "error": "munmap: Invalid argument"}])
