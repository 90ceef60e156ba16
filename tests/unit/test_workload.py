"""The workload scenario's judgement: the contract rules that need no script, on recorded streams
that break each of them; and the split of a program's output from nhctl's counters."""

import pytest

from harness.events import Callback, Event
from harness.guest_data import GuestDataError
from harness.model.versions import features_for
from harness.scenarios.probe import ProbeStats
from harness.scenarios.workload import judge_workload, split_output
from tests.unit.tracebuilder import A, TraceBuilder

F61, F612 = features_for((6, 1)), features_for((6, 12))
REAPER = 31


def stats(records) -> ProbeStats:
    return ProbeStats(written=len(records), dropped=0, read=len(records))


def clean() -> TraceBuilder:
    t = TraceBuilder()
    t.window(Event.UNMAP, A, A + 0x2000, ir=True)
    t.window(Event.CLEAR, A, A + 0x1000, ir=True)
    t.window(Event.UNMAP, A, A + 0x1000, blockable=False, pid=REAPER, ir=True)
    t.ir(A + 0x100000, A + 0x101000)        # an mmu_gather flush with no window (MADV_COLD on 6.1)
    return t.release()


def judge(t: TraceBuilder, f=F61, st=None):
    return judge_workload(t.records, f, st or stats(t.records), frozenset({REAPER}))


def rules(j) -> set[str]:
    return {line.split("[", 1)[1].split("]", 1)[0] for line in j.findings if "[" in line}


def test_a_clean_stream_passes_and_counts_its_windows():
    j = judge(clean())
    assert j.findings == [] and j.windows == 3 and j.bare_invalidates == 1


def broken_pairing():
    t = TraceBuilder()
    t.start(Event.UNMAP, A, A + 0x2000)
    return t.release()


def broken_end_range():
    t = TraceBuilder()
    t.start(Event.UNMAP, A, A + 0x2000).end(Event.UNMAP, A, A + 0x1000)
    return t.release()


def broken_blockable():
    return TraceBuilder().window(Event.CLEAR, A, A + 0x1000, blockable=False).release()


def after_release():
    return TraceBuilder().release().window(Event.CLEAR, A, A + 0x1000)


def twice_released():
    return TraceBuilder().release().release()


def gap():
    t = clean()
    del t.records[1]
    return t


def change_pte_outside():
    return TraceBuilder().add(Callback.CHANGE_PTE, A).release()


def empty_range():
    return TraceBuilder().window(Event.CLEAR, A + 0x1000, A + 0x1000).release()


@pytest.mark.parametrize("make, rule", [
    (broken_pairing, "pairing"), (broken_end_range, "end-range"), (broken_blockable, "blockable"),
    (after_release, "release"), (twice_released, "release"), (gap, "sequence"),
    (change_pte_outside, "change-pte"), (empty_range, "range"),
])
def test_each_contract_rule_fails_a_stream_that_breaks_it(make, rule):
    j = judge(make())
    assert rule in rules(j), j.findings


def test_the_release_must_come():
    t = TraceBuilder().window(Event.CLEAR, A, A + 0x1000)
    assert "release" in rules(judge(t))


def test_lost_records_are_a_finding():
    t = clean()
    j = judge_workload(t.records, F61, ProbeStats(written=20, dropped=3, read=len(t.records)), frozenset())
    assert any("dropped 3 records" in f for f in j.findings)


def test_the_programs_output_is_split_from_nhctls_counters():
    counters = b'{"op": "probe-stats", "written": 4, "dropped": 0, "read": 4, "exit_status": 3, "signal": 0}\n'
    out, st = split_output(b"hello\n" + b'{"op": "probe-stats", "fake": 1}\n' + b"no newline" + counters, "w")
    assert out == b'hello\n{"op": "probe-stats", "fake": 1}\nno newline' and st.exit_status == 3
    with pytest.raises(GuestDataError, match="nhctl printed no counters"):
        split_output(b"the program ran and nhctl died", "w")
    with pytest.raises(GuestDataError):
        split_output(b'{"op": "probe-stats", "written": "x"}\n', "w")
