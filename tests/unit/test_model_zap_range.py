"""Joining a time namespace and TCP zero-copy receive in the model (harness/model/families/
zap_range.py): one CLEAR over what is zapped, by version zap_page_range or zap_page_range_single;
each rule with the trace the kernel's source gives, and the same trace broken."""

import pytest

from harness.events import Event
from harness.model.ops import Op
from harness.model.versions import features_for
from tests.unit.tracebuilder import K, TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
CLEAR = Event.CLEAR
BOTH = pytest.mark.parametrize("f", [V61, V612], ids=["6.1", "6.12"])
VVAR = 0x7FFFF7FF8000
SOCK = 0x7FFFF7F00000


def finish(tb: TraceBuilder, ops: list[Op], f) -> list[str]:
    return tb.rules(ops, f)


def timens(tb: TraceBuilder, t0: int, clock_ok: int = 1) -> Op:
    return tb.op("timens", t0, start=VVAR, end=VVAR + 16 * K, extra={"clock_ok": clock_ok})


def tcpzc(tb: TraceBuilder, t0: int, inq: int, length: int = 64 * K, mapped: int = 0) -> Op:
    return tb.op("tcpzc", t0, start=SOCK, end=SOCK + length,
                 extra={"inq": inq, "length": length, "mapped": mapped, "skip": inq - mapped, "zc_err": 0})


@BOTH
def test_joining_a_time_namespace_zaps_vvar_whole(f):
    tb = TraceBuilder()
    t0 = tb.tick()
    tb.window(CLEAR, VVAR, VVAR + 16 * K, ir=f.invalidate_range)
    assert finish(tb, [timens(tb, t0)], f) == []


def test_a_partial_vvar_zap_or_a_broken_clock_is_wrong():
    tb = TraceBuilder()
    t0 = tb.tick()
    tb.window(CLEAR, VVAR, VVAR + 4 * K)
    assert finish(tb, [timens(tb, t0)], V612) == ["missing", "unexpected"]
    tb = TraceBuilder()
    t0 = tb.tick()
    tb.window(CLEAR, VVAR, VVAR + 16 * K)
    assert finish(tb, [timens(tb, t0, clock_ok=0)], V612) == ["timens"]
    tb = TraceBuilder()
    t0 = tb.tick()
    tb.window(CLEAR, VVAR, VVAR + 16 * K)
    assert finish(tb, [timens(tb, t0)], V61) == ["invalidate-range"]


@BOTH
@pytest.mark.parametrize("inq, length, zapped", [(12388, 64 * K, 12 * K), (40 * K, 16 * K, 16 * K)])
def test_zero_copy_receive_zaps_the_whole_pages_it_may_map(f, inq, length, zapped):
    tb = TraceBuilder()
    t0 = tb.tick()
    tb.window(CLEAR, SOCK, SOCK + zapped, ir=f.invalidate_range)
    assert finish(tb, [tcpzc(tb, t0, inq, length)], f) == []


def test_less_than_a_page_queued_zaps_nothing():
    tb = TraceBuilder()
    assert finish(tb, [tcpzc(tb, tb.tick(), 100)], V612) == []
    tb = TraceBuilder()
    t0 = tb.tick()
    tb.window(CLEAR, SOCK, SOCK + 4 * K)
    assert finish(tb, [tcpzc(tb, t0, 100)], V612) == ["unexpected"]


def test_a_zap_of_the_wrong_length_or_mapping_more_is_wrong():
    tb = TraceBuilder()
    t0 = tb.tick()
    tb.window(CLEAR, SOCK, SOCK + 16 * K)
    assert finish(tb, [tcpzc(tb, t0, 12388)], V612) == ["missing", "unexpected"]
    tb = TraceBuilder()
    t0 = tb.tick()
    tb.window(CLEAR, SOCK, SOCK + 12 * K)
    assert finish(tb, [tcpzc(tb, t0, 12388, mapped=16 * K)], V612) == ["tcp-zerocopy"]
