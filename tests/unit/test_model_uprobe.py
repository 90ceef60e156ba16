"""The uprobe family's rules: __replace_page's window each way, per version; a wrong trace fails."""

from harness.events import Event
from harness.model.families.uprobe import INT3, replace_page_want
from harness.model.ops import Op
from harness.model.versions import features_for
from tests.unit.tracebuilder import TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
CLEAR = Event.CLEAR
TEXT = 0x406000          # a page of the workload's text: the probe at its first byte
ORIG = 0x8D


def probe_op(tb: TraceBuilder, kind: str, t0: int, vaddr: int = TEXT, byte: int = -1, hits: int = 3) -> Op:
    page = vaddr & ~0xFFF
    if byte < 0:
        byte = INT3 if kind == "uprobe-on" else ORIG
    return tb.op(kind, t0, start=page, end=page + 0x1000,
                 extra={"vaddr": vaddr, "offset": vaddr - 0x400000, "orig": ORIG, "byte": byte, "calls": 3,
                        "hits": hits})


def run(tb: TraceBuilder, ops: list[Op], f=V612) -> list[str]:
    return tb.rules(ops, f)


def on_off(f, on_pte: bool, off_pte: bool, ir: bool, **on_kw) -> list[str]:
    tb = TraceBuilder()
    t0 = tb.tick()
    tb.window(CLEAR, TEXT, TEXT + 0x1000, ir=ir, pte=TEXT if on_pte else None)
    on = probe_op(tb, "uprobe-on", t0, **on_kw)
    t1 = tb.tick()
    tb.window(CLEAR, TEXT, TEXT + 0x1000, ir=ir, pte=TEXT if off_pte else None)
    return run(tb, [on, probe_op(tb, "uprobe-off", t1)], f)


def test_612_places_and_removes_under_one_page_clear_each():
    assert on_off(V612, on_pte=False, off_pte=False, ir=False) == []


def test_61_placing_holds_change_pte_and_invalidate_range_removing_no_change_pte():
    assert on_off(V61, on_pte=True, off_pte=False, ir=True) == []


def test_61_placing_without_change_pte_is_a_finding():
    assert on_off(V61, on_pte=False, off_pte=False, ir=True) == ["change-pte"]


def test_61_removing_with_change_pte_is_a_finding():
    # set_pte_at_notify runs only when a new page replaces the old: removal maps none.
    assert on_off(V61, on_pte=True, off_pte=True, ir=True) == ["change-pte"]


def test_61_without_invalidate_range_is_a_finding():
    assert on_off(V61, on_pte=True, off_pte=False, ir=False) == ["invalidate-range", "invalidate-range"]


def test_612_change_pte_is_a_finding():
    assert on_off(V612, on_pte=True, off_pte=False, ir=False) == ["change-pte"]


def test_a_missing_window_and_a_wrong_range_are_findings():
    tb = TraceBuilder()
    t0 = tb.tick()
    on = probe_op(tb, "uprobe-on", t0)
    t1 = tb.tick()
    tb.window(CLEAR, TEXT, TEXT + 0x2000)
    assert run(tb, [on, probe_op(tb, "uprobe-off", t1)]) == ["missing", "missing", "unexpected"]


def test_the_probe_must_be_seen_and_counted():
    assert on_off(V612, on_pte=False, off_pte=False, ir=False, byte=ORIG) == ["uprobe"]
    assert on_off(V612, on_pte=False, off_pte=False, ir=False, hits=2) == ["uprobe"]


def test_61_starts_the_window_at_the_probed_address_612_at_its_page():
    # 6.1's uprobe_write_opcode passes vaddr itself to __replace_page; 6.8 passes vaddr & PAGE_MASK.
    w61, w612 = replace_page_want(TEXT + 0x10, V61, True), replace_page_want(TEXT + 0x10, V612, True)
    assert (w61.start, w61.end, w61.change_pte, w61.invalidate_range) == \
        (TEXT + 0x10, TEXT + 0x1010, TEXT + 0x10, (TEXT + 0x10, TEXT + 0x1010))
    assert (w612.start, w612.end, w612.change_pte, w612.invalidate_range) == (TEXT, TEXT + 0x1000, None, None)
