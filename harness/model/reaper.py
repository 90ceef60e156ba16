"""The OOM reaper's callbacks (kernel-semantics.md §2), judged per attempt.

__oom_reap_task_mm walks the VMAs in address order; for each one it may reap
(not VM_HUGETLB or VM_PFNMAP; anonymous or not VM_SHARED) it starts a
non-blockable UNMAP over exactly the VMA.  If every start succeeds the range
is zapped and ended.  If a start fails, nothing is zapped for that VMA, the
walk goes on with the next, and the attempt fails; oom_reap_task retries up
to MAX_OOM_REAP_RETRIES (10) times, 100 ms apart, then logs
"oom_reaper: unable to reap pid".

What a notifier sees in each mode the harness sets up:
  normal          primary: start, end (one attempt, then "reaped process")
  fail            the failing primary (called first): start -> -EAGAIN; the
                  recorder registered before it: start (every subscriber is
                  still called) and end (the unwind); no end for the failing one
  interval-fail   a VMA that meets the failing interval notifier: only the
                  interval's failed invalidate, no hlist callback at all
                  (mn_itree_invalidate returns before the hlist is walked);
                  any other VMA: primary start, end
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from harness.events import Callback, Event, Record, Subscriber
from harness.model.findings import Finding, window_around
from harness.model.ops import VmaInfo

MAX_ATTEMPTS = 10
MODES = ("normal", "fail", "interval-fail")

# (callback, subscriber, event, start, end, failed): what one callback of the reaper looks like
Token = tuple[Callback, Subscriber, Optional[Event], int, int, bool]


def _tokens_for(vma: VmaInfo, mode: str, interval: Optional[tuple[int, int]]) -> list[Token]:
    u = Event.UNMAP
    if mode == "interval-fail" and interval and vma.start < interval[1] and interval[0] < vma.end:
        return [(Callback.INTERVAL_INVALIDATE, Subscriber.INTERVAL, u, vma.start, vma.end, True)]
    if mode == "fail":
        return [(Callback.START, Subscriber.PRIMARY, u, vma.start, vma.end, True),
                (Callback.START, Subscriber.SECOND, u, vma.start, vma.end, False),
                (Callback.END, Subscriber.SECOND, u, vma.start, vma.end, False)]
    return [(Callback.START, Subscriber.PRIMARY, u, vma.start, vma.end, False),
            (Callback.END, Subscriber.PRIMARY, u, vma.start, vma.end, False)]


def _describe(t: Token) -> str:
    cb, sub, ev, s, e, failed = t
    return f"{cb.name.lower()} {ev.name if ev else ''} [{s:#x}, {e:#x}) [{sub.name.lower()}]" + \
           (" FAILED" if failed else "")


@dataclass(frozen=True)
class ReaperJudgement:
    findings: list[Finding]
    attempts: int
    reapable: int


def judge_reaper(records: Sequence[Record], vmas: Sequence[VmaInfo], reaper_pid: int, mode: str,
                 interval: Optional[tuple[int, int]] = None) -> ReaperJudgement:
    if mode not in MODES:
        raise ValueError(mode)
    reapable = [v for v in vmas if v.reapable]
    attempt = [t for v in reapable for t in _tokens_for(v, mode, interval)]
    seen = [r for r in records if r.pid == reaper_pid
            and r.callback in (Callback.START, Callback.END, Callback.INTERVAL_INVALIDATE)]
    findings: list[Finding] = []

    def add(message: str, seq: int = 0, expected: str = "", observed: str = "") -> None:
        findings.append(Finding(rule="oom-reaper", op=f"OOM reaper (pid {reaper_pid}, {mode})", message=message,
                                expected=expected, observed=observed,
                                window=window_around(records, seq) if seq else ()))

    for r in seen:
        if r.blockable:
            add(f"the reaper's {r.describe()} is blockable: __oom_reap_task_mm uses "
                f"mmu_notifier_invalidate_range_start_nonblock", r.seq, expected="non-blockable")
    if not attempt:
        add("the victim had no VMA the reaper may reap")
        return ReaperJudgement(findings, 0, 0)
    if not seen:
        add("the reaper made no callback at all: it never reaped (did exit_mmap run first?)",
            expected=f"{len(reapable)} non-blockable UNMAP windows, one per reapable VMA")
        return ReaperJudgement(findings, 0, len(reapable))

    attempts = 0
    for i in range(0, len(seen), len(attempt)):
        chunk = seen[i:i + len(attempt)]
        attempts += 1
        for want, r in zip(attempt, chunk):
            got: Token = (r.callback, r.subscriber, r.event, r.start, r.end, r.failed)
            if got != want:
                add(f"attempt {attempts}: expected {_describe(want)}, got {r.describe()}", r.seq,
                    expected=_describe(want), observed=r.describe())
                return ReaperJudgement(findings, attempts, len(reapable))
        if len(chunk) < len(attempt):
            missing = attempt[len(chunk)]
            add(f"attempt {attempts} stopped early: {_describe(missing)} never came", chunk[-1].seq,
                expected=_describe(missing))
    succeeded = mode == "normal"
    if succeeded and attempts != 1:
        add(f"{attempts} reaping attempts, but the first one succeeds when no notifier fails",
            expected="one attempt")
    if not succeeded and attempts > MAX_ATTEMPTS:
        add(f"{attempts} reaping attempts; oom_reap_task gives up after {MAX_ATTEMPTS}",
            expected=f"at most {MAX_ATTEMPTS}")
    return ReaperJudgement(findings, attempts, len(reapable))


_BAD = re.compile(r"(WARNING:|BUG:|INFO: task .* blocked for more than|Oops|Kernel panic)")


def judge_reaper_log(log: str, victim_pid: int, mode: str) -> list[Finding]:
    """What the kernel log must say about this victim, and must not say at all."""
    findings: list[Finding] = []
    reaped = re.search(rf"oom_reaper: reaped process {victim_pid} ", log)
    unable = re.search(rf"oom_reaper: unable to reap pid:{victim_pid} ", log)
    if mode == "normal":
        if not reaped:
            findings.append(Finding(rule="oom-log", message=f"no 'oom_reaper: reaped process {victim_pid}' line",
                                    expected="the reaper reports the reaped process"))
        if unable:
            findings.append(Finding(rule="oom-log", message=unable.group(0).strip()))
    else:
        if not unable:
            findings.append(Finding(rule="oom-log", message=f"no 'oom_reaper: unable to reap pid:{victim_pid}' "
                                    f"line after the notifier failed every attempt",
                                    expected="oom_reap_task gives up and says so"))
        if reaped:
            findings.append(Finding(rule="oom-log", message=f"the reaper says it reaped {victim_pid}, but its "
                                    f"notifier failed every start"))
        if mode == "fail" and "callback failed with -11 in non-blockable context" not in log:
            findings.append(Finding(rule="oom-log", message="no 'callback failed with -11 in non-blockable "
                                    "context' line from mn_hlist_invalidate_range_start",
                                    expected="the core logs every failed start"))
    for line in log.splitlines():
        if _BAD.search(line):
            findings.append(Finding(rule="kernel-log", message=f"kernel log: {line.strip()}"))
            break
    return findings
