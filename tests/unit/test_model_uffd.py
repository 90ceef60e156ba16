"""The uffd family's rules: PAGEMAP_SCAN's windows per walk, UFFDIO_MOVE's CLEAR per source page or
THP; a wrong trace fails; 6.1 has neither."""

import pytest

from harness.events import Event
from harness.model.expect import judge
from harness.model.ops import ModelError, Op
from harness.model.versions import features_for
from tests.unit.tracebuilder import A, K, M, PID, TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
CLEAR, PROT_VMA = Event.CLEAR, Event.PROTECTION_VMA
G = 1 << 30


def mapping(tb: TraceBuilder, name: str, start: int, size: int, thp: bool = False) -> Op:
    return tb.mapping(size, thp, name, start)


def run(tb: TraceBuilder, ops: list[Op], f=V612) -> list[str]:
    return tb.rules(ops, f)


def pmscan(tb: TraceBuilder, window: tuple[int, int] | None, ret: int = 0) -> list[Op]:
    m = mapping(tb, "A", A, 6 * M)
    t0 = tb.tick()
    if window:
        tb.window(PROT_VMA, *window)
    return [m, tb.op("pmscan", t0, name="A", start=A, end=A + 8 * M, extra={"ret": ret, "walk_end": A + 8 * M})]


def test_pmscan_opens_one_window_over_the_range_asked_for():
    tb = TraceBuilder()
    assert run(tb, pmscan(tb, (A, A + 8 * M))) == []


def test_pmscan_clipped_to_the_mapping_or_matching_pages_is_a_finding():
    tb = TraceBuilder()
    assert run(tb, pmscan(tb, (A, A + 6 * M))) == ["missing", "unexpected"]
    tb = TraceBuilder()
    assert run(tb, pmscan(tb, (A, A + 8 * M), ret=3)) == ["pagemap-scan"]


def wpscan(tb: TraceBuilder, walks: tuple[int, ...], regions: int = 768) -> list[Op]:
    m = mapping(tb, "A", A, 6 * M)
    t0 = tb.tick()
    tb.window(PROT_VMA, A, A + 6 * M)                    # scan 1
    for w in walks:
        tb.window(PROT_VMA, w, A + 6 * M)                # scan 2, one window per walk
    tb.window(PROT_VMA, A, A + 6 * M)                    # UFFDIO_UNREGISTER: change_pud_range
    return [m, tb.op("uffd-wpscan", t0, name="A", start=A, end=A + 6 * M,
                     extra={"stride": 2, "written": 768, "scan1": 0, "regions": regions, "walk_end": 0})]


def test_wpscan_walks_again_at_the_513th_written_page():
    tb = TraceBuilder()
    assert run(tb, wpscan(tb, (A, A + 4 * M))) == []


def test_wpscan_with_one_walk_or_a_wrong_count_is_a_finding():
    tb = TraceBuilder()
    assert run(tb, wpscan(tb, (A,))) == ["missing"]
    tb = TraceBuilder()
    assert run(tb, wpscan(tb, (A, A + 4 * M), regions=512)) == ["pagemap-scan"]


def move(tb: TraceBuilder, windows: list[tuple[int, int]], thp: bool, err: int = 0, dst_bad: int = 0) -> list[Op]:
    size = 4 * M if thp else M
    src = mapping(tb, "S", A + G, size, thp=thp)
    length = 2 * M if thp else 64 * K
    dst = A + 3 * G
    t0 = tb.tick()
    for w in windows:
        tb.window(CLEAR, *w)
    op = tb.op("uffd-move", t0, name="S", start=A + G, end=A + G + length, errno=err,
               anon_huge_kb=2048 if thp else -1,
               extra={"dst": dst, "dst_end": dst + length, "moved": length, "src_present": 0, "dst_bad": dst_bad,
                      "dst_huge_kb": 2048 if thp else 0})
    return [src, op]


def test_move_of_4k_pages_clears_each_source_page():
    tb = TraceBuilder()
    pages = [(A + G + i * 4 * K, A + G + (i + 1) * 4 * K) for i in range(16)]
    assert run(tb, move(tb, pages, thp=False)) == []


def test_move_of_a_thp_clears_the_source_pmd_only():
    tb = TraceBuilder()
    assert run(tb, move(tb, [(A + G, A + G + 2 * M)], thp=True)) == []
    tb = TraceBuilder()
    both = [(A + G, A + G + 2 * M), (A + 3 * G, A + 3 * G + 2 * M)]
    assert run(tb, move(tb, both, thp=True)) == ["unexpected"]


def test_move_failing_or_losing_data_is_a_finding():
    tb = TraceBuilder()
    assert run(tb, move(tb, [(A + G, A + G + 2 * M)], thp=True, dst_bad=1)) == ["uffd-move"]
    tb = TraceBuilder()
    assert run(tb, move(tb, [], thp=True, err=16)) == ["missing", "uffd-move"]


def test_61_has_neither():
    for ops in (lambda tb: pmscan(tb, None), lambda tb: move(tb, [], thp=False)):
        tb = TraceBuilder()
        with pytest.raises(ModelError, match="6.1 has none"):
            judge(tb.records, ops(tb), PID, V61)


def test_the_scenario_skips_on_61_naming_what_it_lacks(tmp_path):
    from harness.config import ScenarioConfig
    from harness.scenarios import SCENARIOS
    from harness.scenarios.base import ScenarioContext
    ctx = ScenarioContext(guest=None, features=V61, config=ScenarioConfig(name="pagemap-uffd"), seed=1,  # type: ignore[arg-type]
                          out_dir=tmp_path, console_tail=lambda: "")
    verdict = SCENARIOS["pagemap-uffd"].run(ctx)
    assert verdict.status == "skip" and "PAGEMAP_SCAN" in verdict.findings[0] and "UFFDIO_MOVE" in verdict.findings[0]
