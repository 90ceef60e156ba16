"""DAMON in the model (harness/model/families/damon.py): kdamond's clear_young at each sampling address,
a PTE's 4 KiB or a huge PMD's 2 MiB from there, test_young only where it made a page old, no window;
and the contract's page-aligned range rule set apart for exactly those ranges."""

from harness.events import Callback, Event
from harness.model.expect import judge
from harness.model.families.damon import explained_unaligned
from harness.model.ops import Op
from harness.model.versions import features_for
from tests.unit.tracebuilder import A, K, M, PID, TraceBuilder

V612 = features_for((6, 12))
KDAMOND, KDAMOND_PA = 77, 78
T = A + (1 << 30)          # the second mapping: two PMD-mapped THPs
SAMPLE_A = A + 0x73B8D     # sampling addresses: any byte of the region
SAMPLE_T = T + 0x1C863E


def damon_trace(*, test_at=SAMPLE_A, pmd_size=2 * M, window=False, no_pmd=False, no_test=False, flush=False,
                pa=((A + M, 4 * K), (T + 2 * M, 2 * M)), pa_test=None):
    """vaddr kdamond: one sample of A's PTE and T's PMD at unaligned addresses; paddr kdamond: the
    entries its rmap walks found for frames of A's and T's second halves, at their starts."""
    tb = TraceBuilder()
    ops = [Op("map", 0, tb.tick(), name="A", start=A, end=A + 2 * M),
           Op("map", 0, tb.tick(), name="T", start=T, end=T + 4 * M, thp=True)]
    t0 = tb.tick()
    tb.add(Callback.CLEAR_YOUNG, SAMPLE_A, SAMPLE_A + 4 * K, pid=KDAMOND)
    if not no_pmd:
        tb.add(Callback.CLEAR_YOUNG, SAMPLE_T, SAMPLE_T + pmd_size, pid=KDAMOND)
    if not no_test:
        tb.add(Callback.TEST_YOUNG, test_at, 0, pid=KDAMOND)
        tb.add(Callback.TEST_YOUNG, SAMPLE_T, 0, pid=KDAMOND)
    if flush:
        tb.add(Callback.CLEAR_FLUSH_YOUNG, A, A + 4 * K, pid=KDAMOND)
    if window:
        tb.window(Event.CLEAR, A, A + 4 * K, pid=KDAMOND)
    for addr, size in pa:
        tb.add(Callback.CLEAR_YOUNG, addr, addr + size, pid=KDAMOND_PA)
    for addr, _ in pa:
        tb.add(Callback.TEST_YOUNG, addr if pa_test is None else pa_test, 0, pid=KDAMOND_PA)
    ops.append(tb.op("damon", t0, extra={"kdamond_pid": KDAMOND, "kdamond_pa_pid": KDAMOND_PA, "regions": 2,
                                         "frames": 9, "sample_us": 5000}))
    j = judge(tb.records, ops, PID, V612)
    kept, unaligned = explained_unaligned(j.findings, tb.records, KDAMOND)
    return [x.rule for x in kept], unaligned


def test_damon_sampling_is_the_specification():
    assert damon_trace() == ([], 2)


def test_test_young_only_where_damon_made_a_page_old():
    rules, _ = damon_trace(test_at=A + 8 * K)
    assert rules == ["damon"]


def test_a_pmd_is_aged_as_a_whole():
    # the wrong size, and so no PMD made old and a test_young at an address never made old
    rules, _ = damon_trace(pmd_size=4 * K)
    assert rules == ["damon"] * 3


def test_both_kinds_of_entry_and_test_young_are_required():
    assert damon_trace(no_pmd=True)[0] == ["damon", "damon"]       # no PMD aged; test_young at T unexplained
    assert damon_trace(no_test=True)[0] == ["damon"]


def test_kdamond_neither_flushes_nor_opens_windows():
    assert damon_trace(flush=True)[0] == ["damon"]
    assert damon_trace(window=True)[0] == ["damon"]


def test_only_kdamonds_unaligned_clear_young_is_set_apart():
    tb = TraceBuilder()
    ops = [Op("map", 0, tb.tick(), name="A", start=A, end=A + 2 * M)]
    tb.add(Callback.CLEAR_YOUNG, SAMPLE_A, SAMPLE_A + 4 * K, pid=KDAMOND)
    tb.add(Callback.CLEAR_YOUNG, SAMPLE_A, SAMPLE_A + 4 * K, pid=PID)          # not kdamond's
    tb.add(Callback.CLEAR_YOUNG, SAMPLE_A, SAMPLE_A + 12 * K, pid=KDAMOND)     # not a PTE's or PMD's size
    j = judge(tb.records, ops, PID, V612)
    assert [x.rule for x in j.findings] == ["range"] * 3
    kept, unaligned = explained_unaligned(j.findings, tb.records, KDAMOND)
    assert unaligned == 1 and len(kept) == 2


def test_paddr_ages_at_the_entry_the_rmap_walk_found():
    assert damon_trace(pa=((A + M, 4 * K),)) == ([], 2)
    # an unaligned or wrongly sized range from the rmap walk
    assert damon_trace(pa=((A + M + 8, 4 * K),))[0] == ["range", "damon", "damon", "damon"]   # not explained
    assert damon_trace(pa=((T + 2 * M, 4 * K),))[0] == ["damon", "damon", "damon"]


def test_paddr_checks_what_it_made_old_and_samples_something():
    assert damon_trace(pa_test=A + 12 * K)[0] == ["damon", "damon"]
    assert damon_trace(pa=())[0] == ["damon", "damon"]
