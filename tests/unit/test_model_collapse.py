"""The collapse family's rules: MADV_COLLAPSE of shmem (shared, two mappings of one file; private
with an anon_vma) and of anonymous memory, per version; a wrong trace fails."""

import errno

import pytest

from harness.events import Event
from harness.model.expect import judge
from harness.model.ops import ModelError, Op
from harness.model.versions import features_for
from tests.unit.tracebuilder import A, M, PID, TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
CLEAR = Event.CLEAR
G = 1 << 30
S, T, P, AN = A, A + G, A + 2 * G, A + 3 * G    # where mmops puts them: one 1 GiB slot each
PAGES = 512


def shmap(tb: TraceBuilder, name: str, start: int, file: int, shared: bool = True) -> Op:
    t0 = tb.tick()
    anon = 0 if shared else start + 2 * M        # the private copy: first page of the last block
    return tb.op("shmap", t0, name=name, start=start, end=start + 4 * M,
                 extra={"shared": int(shared), "file": file, "anon_page": anon})


def collapse(tb: TraceBuilder, t0: int, name: str, start: int, off: int = 0, err: int = 0, pmd_kb: int = 2048,
             huge_kb: int = 0) -> Op:
    return tb.op("collapse", t0, name=name, start=start + off, end=start + off + 2 * M, errno=err,
                 anon_huge_kb=huge_kb, extra={"shmem_pmd_kb": pmd_kb})


def unmap_pages(tb: TraceBuilder, f, bases: tuple[int, ...], pages=range(PAGES), skip: frozenset = frozenset()):
    """try_to_unmap_one of each page, in each mapping in turn."""
    for i in pages:
        if i in skip:
            continue
        for base in bases:
            a = base + i * 4096
            tb.window(CLEAR, a, a + 4096, ir=f.invalidate_range)


def run(tb: TraceBuilder, ops: list[Op], f) -> list[str]:
    return tb.rules(ops, f)


def setup(tb: TraceBuilder) -> list[Op]:
    return [shmap(tb, "S", S, 0), shmap(tb, "T", T, 0), shmap(tb, "P", P, 2, shared=False)]


def shared_trace(f, tb: TraceBuilder, drop_t_retract: bool = False, extra_t: bool = False) -> list[Op]:
    """collapse:S then collapse:T, as each version does it."""
    ops = setup(tb)
    t0 = tb.tick()
    unmap_pages(tb, f, (S, T))
    if f.collapse_retracts_all:
        tb.window(CLEAR, S, S + 2 * M)                  # retract_page_tables: every mapping
        if not drop_t_retract:
            tb.window(CLEAR, T, T + 2 * M)
    else:
        tb.window(CLEAR, S, S + 2 * M, ir=True)         # collapse_and_free_pmd: the caller's only
        if extra_t:
            tb.window(CLEAR, T, T + 2 * M, ir=True)
    ops.append(collapse(tb, t0, "S", S))
    t1 = tb.tick()
    if not f.collapse_retracts_all:
        tb.window(CLEAR, T, T + 2 * M, ir=True)         # collapse_pte_mapped_thp -> collapse_and_free_pmd
    ops.append(collapse(tb, t1, "T", T))
    return ops


@pytest.mark.parametrize("f", [V61, V612], ids=["6.1", "6.12"])
def test_shared_collapse_unmaps_each_page_in_each_mapping_then_retracts(f):
    tb = TraceBuilder()
    assert run(tb, shared_trace(f, tb), f) == []


def test_612_retracts_the_other_mapping_too():
    tb = TraceBuilder()
    assert run(tb, shared_trace(V612, tb, drop_t_retract=True), V612) == ["missing"]


def test_61_leaves_the_other_mapping_to_khugepaged():
    tb = TraceBuilder()
    assert run(tb, shared_trace(V61, tb, extra_t=True), V61) == ["unexpected"]


def test_61_unmap_windows_hold_invalidate_range():
    tb = TraceBuilder()
    ops = setup(tb)
    t0 = tb.tick()
    unmap_pages(tb, V612, (S, T))                       # 6.12's windows: nothing inside
    tb.window(CLEAR, S, S + 2 * M, ir=True)
    ops.append(collapse(tb, t0, "S", S))
    assert set(run(tb, ops, V61)) == {"invalidate-range"}


def test_a_page_left_mapped_is_a_missing_window():
    tb = TraceBuilder()
    ops = setup(tb)
    t0 = tb.tick()
    unmap_pages(tb, V612, (S, T), skip=frozenset({7}))
    tb.window(CLEAR, S, S + 2 * M).window(CLEAR, T, T + 2 * M)
    ops.append(collapse(tb, t0, "S", S))
    assert run(tb, ops, V612) == ["missing", "missing"]


def private_trace(f, tb: TraceBuilder, err1: int, err3: int = errno.EINVAL, pmd1: int = -1) -> list[Op]:
    """collapse:P:0:2M twice, then collapse:P:2M:2M (its block holds the private copy)."""
    ops = setup(tb)[2:]
    t0 = tb.tick()
    unmap_pages(tb, f, (P,))
    if f.collapse_retracts_all:
        tb.window(CLEAR, P, P + 2 * M)                  # collapse_pte_mapped_thp: the anon_vma kept it
    ops.append(collapse(tb, t0, "P", P, err=err1, pmd_kb=pmd1 if pmd1 >= 0 else (2048 if not err1 else 0)))
    t1 = tb.tick()
    if not f.collapse_retracts_all:
        tb.window(CLEAR, P, P + 2 * M, ir=True)         # collapse_pte_mapped_thp -> collapse_and_free_pmd
    ops.append(collapse(tb, t1, "P", P))
    t2 = tb.tick()
    unmap_pages(tb, f, (P + 2 * M,), skip=frozenset({0}))   # the private copy is not the file's page
    ops.append(collapse(tb, t2, "P", P, off=2 * M, err=err3))
    return ops


def test_61_private_with_an_anon_vma_fails_first_then_collapses():
    tb = TraceBuilder()
    assert run(tb, private_trace(V61, tb, errno.EINVAL), V61) == []


def test_612_private_with_an_anon_vma_collapses_at_once():
    tb = TraceBuilder()
    assert run(tb, private_trace(V612, tb, 0), V612) == []


def test_the_errno_and_the_pmd_state_are_judged():
    tb = TraceBuilder()
    assert run(tb, private_trace(V61, tb, 0, pmd1=0), V61) == ["collapse"]
    tb = TraceBuilder()
    assert run(tb, private_trace(V612, tb, 0, err3=0), V612) == ["collapse"]
    tb = TraceBuilder()
    assert run(tb, private_trace(V612, tb, 0, pmd1=0), V612) == ["thp-state"]


def anon_trace(f, tb: TraceBuilder, window: bool = True, huge_kb: int = 2048) -> list[Op]:
    t0 = tb.tick()
    m = tb.op("map", t0, name="A", start=AN, end=AN + 2 * M, thp=False, anon_huge_kb=0)
    t1 = tb.tick()
    if window:
        tb.window(CLEAR, AN, AN + 2 * M, ir=f.invalidate_range)
    return [m, collapse(tb, t1, "A", AN, pmd_kb=0, huge_kb=huge_kb)]


@pytest.mark.parametrize("f", [V61, V612], ids=["6.1", "6.12"])
def test_anonymous_collapse_is_collapse_huge_page(f):
    tb = TraceBuilder()
    assert run(tb, anon_trace(f, tb), f) == []


def test_anonymous_collapse_without_its_window_or_its_thp_fails():
    tb = TraceBuilder()
    assert run(tb, anon_trace(V612, tb, window=False), V612) == ["missing"]
    tb = TraceBuilder()
    assert run(tb, anon_trace(V612, tb, huge_kb=0), V612) == ["thp-state"]


def test_shmap_outside_whole_blocks_is_refused():
    tb = TraceBuilder()
    op = tb.op("shmap", tb.tick(), name="S", start=S + 4096, end=S + 4 * M,
               extra={"shared": 1, "file": 0, "anon_page": 0})
    with pytest.raises(ModelError, match="whole 2 MiB blocks"):
        judge(tb.records, [op], PID, V612)
