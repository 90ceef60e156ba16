"""The cross-check of the probe's records against KVM's tracepoints, and the ftrace parser."""

from __future__ import annotations

from harness.events import Callback, Event, parse_overruns, parse_trace
from harness.model.kvm_notifier import cross_check
from harness.model.versions import features_for
from tests.unit.tracebuilder import PID, TraceBuilder

V61, V612 = features_for((6, 1)), features_for((6, 12))
SLOT = (0x7F0000000000, 0x7F0000400000)
S = SLOT[0]
KSMD = 42


def line(event: str, msg: str, pid: int = PID, comm: str = "minivmm", ts: float = 10.0) -> str:
    """A trace line as ftrace prints it, the message in the tracepoint's own format."""
    return f"         {comm}-{pid}     [001] d..1.   {ts:.6f}: {event}: {msg}"


def unmap(start: int, end: int, **kw) -> str:
    return line("kvm_unmap_hva_range", f"mmu notifier unmap range: {start:#016x} -- {end:#016x}", **kw)


def set_spte(hva: int, **kw) -> str:
    return line("kvm_set_spte_hva", f"mmu notifier set pte hva: {hva:#016x}", **kw)


def age(start: int, end: int, **kw) -> str:
    return line("kvm_age_hva", f"mmu notifier age hva: {start:#016x} -- {end:#016x}", **kw)


def young_test(hva: int, **kw) -> str:
    return line("kvm_test_age_hva", f"mmu notifier test age hva: {hva:#016x}", **kw)


def trace(*lines: str) -> list:
    return parse_trace("# tracer: nop\n#\n" + "\n".join(lines) + "\n")


def ksm_probe() -> TraceBuilder:
    """ksmd merging one page on 6.1: write_protect_page and replace_page, each a CLEAR window
    with change_pte inside, as the probe records them (kernel-semantics.md §3)."""
    t = TraceBuilder()
    for _ in range(2):
        t.start(Event.CLEAR, S, S + 0x1000, pid=KSMD)
        t.add(Callback.CHANGE_PTE, S, pid=KSMD)
        t.end(Event.CLEAR, S, S + 0x1000, pid=KSMD)
    return t


def ksm_trace(**kw) -> list:
    return trace(*[x for _ in range(2) for x in (unmap(S, S + 0x1000, pid=KSMD, comm="ksmd", **kw),
                                                 set_spte(S, pid=KSMD, comm="ksmd", **kw))])


def test_parse_trace_reads_the_kvm_formats_and_kprobes():
    events = trace(unmap(S, S + 0x1000), age(S, S + 0x2000), young_test(S + 0x3000), set_spte(S),
                   line("kvm_release", "(kvm_mmu_notifier_release+0x0/0x60 [kvm])"), "CPU:1 [LOST 3 EVENTS]", "")
    assert [(e.name, e.start, e.end) for e in events] == [
        ("kvm_unmap_hva_range", S, S + 0x1000), ("kvm_age_hva", S, S + 0x2000),
        ("kvm_test_age_hva", S + 0x3000, 0), ("kvm_set_spte_hva", S, 0), ("kvm_release", 0, 0)]
    assert events[0].pid == PID and events[0].comm == "minivmm" and events[0].cpu == 1


def test_parse_overruns():
    assert parse_overruns("entries: 5\noverrun: 0\ncommit overrun: 0\n"
                          "entries: 9\noverrun: 3\ncommit overrun: 0\n") == 3


def test_agreeing_observers_pass_and_count_the_slot():
    check = cross_check(ksm_probe().records, ksm_trace(), V61, SLOT)
    assert check.findings == ()
    assert check.matched == {"unmap": 2, "set_spte": 2} and check.in_slot == {"unmap": 2, "set_spte": 2}


def test_a_start_kvm_did_not_trace_fails():
    events = trace(unmap(S, S + 0x1000, pid=KSMD), set_spte(S, pid=KSMD), set_spte(S, pid=KSMD))
    findings = cross_check(ksm_probe().records, events, V61, SLOT).findings
    assert len(findings) == 1 and f"task {KSMD}" in findings[0]
    assert "call 3 of 4: the probe saw unmap" in findings[0]


def test_a_different_range_fails():
    t = TraceBuilder().start(Event.CLEAR, S, S + 0x200000)
    findings = cross_check(t.records, trace(unmap(S, S + 0x1000)), V612, SLOT).findings
    assert findings and "the probe saw unmap [0x7f0000000000, 0x7f0000200000)" in findings[0]


def test_kvm_only_calls_are_allowed_at_the_edges_but_not_in_the_middle():
    t = TraceBuilder().start(Event.CLEAR, S, S + 0x1000).start(Event.CLEAR, S + 0x1000, S + 0x2000)
    edges = trace(unmap(0x1000, 0x2000), unmap(S, S + 0x1000), unmap(S + 0x1000, S + 0x2000), unmap(0x3000, 0x4000))
    check = cross_check(t.records, edges, V612, SLOT)
    assert check.findings == () and check.edge_only == 2
    middle = trace(unmap(S, S + 0x1000), unmap(0x1000, 0x2000), unmap(S + 0x1000, S + 0x2000))
    assert cross_check(t.records, middle, V612, SLOT).findings


def test_tasks_are_compared_separately():
    """Two tasks' callbacks interleave differently for the two observers; each task's order holds."""
    t = TraceBuilder().start(Event.CLEAR, S, S + 0x1000, pid=1).start(Event.CLEAR, S + 0x1000, S + 0x2000, pid=2)
    events = trace(unmap(S + 0x1000, S + 0x2000, pid=2), unmap(S, S + 0x1000, pid=1))
    assert cross_check(t.records, events, V612, SLOT).findings == ()
    wrong_task = trace(unmap(S + 0x1000, S + 0x2000, pid=1), unmap(S, S + 0x1000, pid=2))
    assert len(cross_check(t.records, wrong_task, V612, SLOT).findings) == 2


def test_young_callbacks_map_to_the_age_events():
    t = TraceBuilder()
    t.add(Callback.CLEAR_FLUSH_YOUNG, S, S + 0x1000).add(Callback.CLEAR_YOUNG, S, S + 0x1000)
    t.add(Callback.TEST_YOUNG, S + 0x5000)
    good = trace(age(S, S + 0x1000), age(S, S + 0x1000), young_test(S + 0x5000))
    check = cross_check(t.records, good, V612, SLOT)
    assert check.findings == () and check.matched == {"age": 2, "test_age": 1}
    wrong = trace(age(S, S + 0x1000), age(S, S + 0x1000), young_test(S + 0x6000))
    assert cross_check(t.records, wrong, V612, SLOT).findings


def test_set_spte_on_a_kernel_without_change_pte_fails():
    findings = cross_check([], trace(set_spte(S)), V612, SLOT).findings
    assert any("no change_pte" in f for f in findings)
    assert not any("no change_pte" in f for f in cross_check([], trace(set_spte(S)), V61, SLOT).findings)


def test_end_and_release_have_no_tracepoint():
    t = TraceBuilder().start(Event.CLEAR, S, S + 0x1000).end(Event.CLEAR, S, S + 0x1000).release()
    assert cross_check(t.records, trace(unmap(S, S + 0x1000)), V612, SLOT).findings == ()
