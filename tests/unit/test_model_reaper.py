"""The OOM reaper's rules (§2), each with the specification's trace and a wrong one."""

import pytest

from harness.events import Callback, Event, Subscriber
from harness.model.contract import check_contract
from harness.model.ops import VmaInfo
from harness.model.reaper import judge_reaper, judge_reaper_log
from harness.model.versions import features_for
from tests.unit.tracebuilder import A, M, TraceBuilder

REAPER = 30
UNMAP = Event.UNMAP
TEXT = VmaInfo(0x400000, 0x401000, "r-xp", frozenset("rd ex mr mw me".split()))
ANON = VmaInfo(A, A + 128 * M, "rw-p", frozenset("rd wr mr mw me ac".split()))
VVAR = VmaInfo(0x7FFF0000, 0x7FFF4000, "r--p", frozenset("rd mr pf io".split()))
SHM = VmaInfo(0x7FFF8000, 0x7FFFA000, "rw-s", frozenset("rd wr sh mr mw me".split()))
VMAS = [TEXT, ANON, VVAR, SHM]
SECOND, PRIMARY = Subscriber.SECOND, Subscriber.PRIMARY


def reap_normal(tb: TraceBuilder, vmas=(TEXT, ANON), blockable=False) -> TraceBuilder:
    for v in vmas:
        tb.window(UNMAP, v.start, v.end, blockable=blockable, pid=REAPER)
    return tb


def reap_failing(tb: TraceBuilder, attempts: int, unwind: bool = True) -> TraceBuilder:
    for _ in range(attempts):
        for v in (TEXT, ANON):
            tb.start(UNMAP, v.start, v.end, blockable=False, pid=REAPER, ret=-11)
            tb.start(UNMAP, v.start, v.end, blockable=False, pid=REAPER, subscriber=SECOND)
            if unwind:
                tb.end(UNMAP, v.start, v.end, blockable=False, pid=REAPER, subscriber=SECOND)
    return tb


def rules(tb: TraceBuilder, mode: str, interval=None) -> list[str]:
    return [f.message for f in judge_reaper(tb.records, VMAS, REAPER, mode, interval).findings]


def test_reapable_vmas_are_private_or_anonymous_without_pfnmap_or_hugetlb():
    assert [v.reapable for v in VMAS] == [True, True, False, False]
    # [vsyscall] (CONFIG_X86_VSYSCALL_EMULATION) is in smaps but is the gate area, no VMA of the mm;
    # a 5-level stack is a VMA like any other.
    vsyscall = VmaInfo(0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, "--xp", frozenset("ex".split()))
    stack = VmaInfo((1 << 56) - (1 << 20), (1 << 56) - 0x1000, "rw-p", frozenset("rd wr mr mw me gd ac".split()))
    assert (vsyscall.reapable, stack.reapable) == (False, True)


def test_one_nonblocking_unmap_per_reapable_vma():
    j = judge_reaper(reap_normal(TraceBuilder()).records, VMAS, REAPER, "normal")
    assert j.findings == [] and j.attempts == 1 and j.reapable == 2


def test_a_blockable_unmap_from_the_reaper_fails():
    messages = rules(reap_normal(TraceBuilder(), blockable=True), "normal")
    assert messages and all("is blockable" in m for m in messages)
    # and the contract agrees once the reaper is the only non-blocking task
    tb = reap_normal(TraceBuilder(), blockable=False)
    assert check_contract(tb.records, features_for((6, 12)), nonblocking_pids=frozenset()).findings
    assert not check_contract(tb.records, features_for((6, 12)), nonblocking_pids=frozenset({REAPER})).findings


def test_a_vma_the_reaper_must_skip_is_a_finding():
    tb = reap_normal(TraceBuilder(), vmas=(TEXT, ANON, VVAR))
    assert any("attempt 2 stopped early" in m or "expected" in m for m in rules(tb, "normal"))


def test_a_missing_vma_is_a_finding():
    messages = rules(reap_normal(TraceBuilder(), vmas=(ANON,)), "normal")
    assert any("expected start UNMAP [0x400000, 0x401000)" in m for m in messages)


def test_no_reaping_at_all_is_a_finding():
    assert any("never reaped" in m for m in rules(TraceBuilder(), "normal"))


def test_failing_notifier_every_subscriber_called_and_unwound_ten_times():
    j = judge_reaper(reap_failing(TraceBuilder(), 10).records, VMAS, REAPER, "fail")
    assert j.findings == [] and j.attempts == 10


def test_missing_unwind_end_fails():
    messages = rules(reap_failing(TraceBuilder(), 10, unwind=False), "fail")
    assert messages and "expected end UNMAP" in messages[0]


def test_more_than_ten_attempts_fails():
    assert any("gives up after 10" in m for m in rules(reap_failing(TraceBuilder(), 11), "fail"))


def test_failed_starts_need_no_end_but_must_be_nonblocking_eagain():
    f = features_for((6, 12))
    tb = reap_failing(TraceBuilder(), 1)
    assert check_contract(tb.records, f, nonblocking_pids=frozenset({REAPER}),
                          no_end=frozenset({PRIMARY})).findings == []
    bad = TraceBuilder().start(UNMAP, A, A + M, blockable=True, pid=REAPER, ret=-11)
    assert [x.rule for x in check_contract(bad.records, f, no_end=frozenset({PRIMARY})).findings] == ["failed-start"]
    bad = TraceBuilder().start(UNMAP, A, A + M, blockable=False, pid=REAPER, ret=-12)
    assert [x.rule for x in check_contract(bad.records, f, nonblocking_pids=frozenset({REAPER}),
                                           no_end=frozenset({PRIMARY})).findings] == ["failed-start"]


def test_an_end_from_a_notifier_without_end_op_fails():
    tb = TraceBuilder().window(UNMAP, A, A + M)
    assert [x.rule for x in check_contract(tb.records, features_for((6, 12)),
                                           no_end=frozenset({PRIMARY})).findings] == ["pairing"]


def test_failing_interval_notifier_hides_the_range_from_the_others():
    interval = (ANON.start, ANON.end)
    tb = TraceBuilder()
    for _ in range(10):
        tb.window(UNMAP, TEXT.start, TEXT.end, blockable=False, pid=REAPER)
        tb.add(Callback.INTERVAL_INVALIDATE, ANON.start, ANON.end, UNMAP, blockable=False, pid=REAPER,
               subscriber=Subscriber.INTERVAL, ret=0)
    assert rules(tb, "interval-fail", interval) == []
    # a primary start for the hidden range is wrong
    tb.start(UNMAP, ANON.start, ANON.end, blockable=False, pid=REAPER).end(UNMAP, ANON.start, ANON.end,
                                                                           blockable=False, pid=REAPER)
    assert rules(tb, "interval-fail", interval)


LOG_REAPED = "[ 5.1] Memory cgroup out of memory: Killed process 133 (mmops)\n" \
             "[ 7.1] oom_reaper: reaped process 133 (mmops), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB\n"
LOG_UNABLE = "[ 5.1] nh_failing_range_start+0x0/0x70 [nh_probe] callback failed with -11 in non-blockable context.\n" \
             "[ 8.2] oom_reaper: unable to reap pid:133 (mmops)\n"


@pytest.mark.parametrize("log, mode, rules_found", [
    (LOG_REAPED, "normal", []),
    (LOG_UNABLE, "normal", ["oom-log", "oom-log"]),
    (LOG_UNABLE, "fail", []),
    (LOG_REAPED, "fail", ["oom-log", "oom-log", "oom-log"]),
    (LOG_UNABLE.splitlines()[1] + " \n", "interval-fail", []),
    (LOG_REAPED + "[ 9.0] WARNING: CPU: 0 PID: 30 at mm/mmu_notifier.c:290\n", "normal", ["kernel-log"]),
])
def test_reaper_log(log, mode, rules_found):
    assert [f.rule for f in judge_reaper_log(log, 133, mode)] == rules_found


def test_version_rules_apply_to_a_notifier_without_end_too():
    tb = TraceBuilder().add(Callback.CHANGE_PTE, A)
    assert [x.rule for x in check_contract(tb.records, features_for((6, 12)),
                                           no_end=frozenset({PRIMARY})).findings] == ["change-pte"]
