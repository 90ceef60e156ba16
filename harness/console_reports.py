"""Kernel reports on a serial console: what went wrong, in one line, with its text.

Pure: it reads console text (a scenario's slice of console.log) and returns
each report the kernel printed, in order.  A report has a kind, a one-line
title in the style kernel developers search for ("WARNING in
__mmu_notifier_invalidate_range_start"), and its full text up to the end of
its trace.  The formats are the kernel's own (lib/bug.c, kernel/panic.c,
arch/x86/mm/fault.c, mm/kasan/report.c, mm/kfence/report.c, lib/ubsan.c,
kernel/locking/lockdep.c, kernel/rcu/tree_stall.h, kernel/hung_task.c,
kernel/watchdog.c, mm/debug.c, mm/memory.c, mm/page_alloc.c, kernel/fork.c).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
_RIP = re.compile(r"\bRIP: \d+:(?:\[<[0-9a-f]+>\] )?([A-Za-z0-9_.]+)\+0x")
_END = re.compile(r"---\[ end (?:trace|Kernel panic)")
_CUT_HERE = "------------[ cut here ]------------"
MAX_LINES = 80


@dataclass(frozen=True)
class Report:
    kind: str       # panic, oops, bug, warning, gpf, kasan, kfence, ubsan, lockdep, rcu-stall, hung-task,
                    # soft-lockup, hard-lockup, mm (what each means for the guest: harness/health.py)
    title: str
    text: str
    line: int       # where it starts in the slice (0-based)


def _rip(lines: list[str]) -> Optional[str]:
    for line in lines:
        m = _RIP.search(line)
        if m:
            return m.group(1)
    return None


def _in(base: str) -> Callable[[re.Match[str], list[str]], str]:
    """Title "<base> in <function of RIP>" (or just base when the trace has no RIP line)."""
    def title(_m: re.Match[str], body: list[str]) -> str:
        func = _rip(body)
        return f"{base} in {func}" if func else base
    return title


def _group(fmt: str) -> Callable[[re.Match[str], list[str]], str]:
    def title(m: re.Match[str], _body: list[str]) -> str:
        return fmt.format(*m.groups())
    return title


# First match wins: the specific "BUG:"/"WARNING:" forms before the generic ones.
_RULES: list[tuple[str, re.Pattern[str], Callable[[re.Match[str], list[str]], str]]] = [
    ("panic", re.compile(r"Kernel panic - not syncing: ?(.*)"), _group("Kernel panic - not syncing: {}")),
    ("kasan", re.compile(r"BUG: KASAN: ([\w-]+) in ([\w.]+)"), _group("KASAN: {} in {}")),
    ("kfence", re.compile(r"BUG: KFENCE: ([\w -]+?) in ([\w.]+)"), _group("KFENCE: {} in {}")),
    ("ubsan", re.compile(r"UBSAN: ([\w-]+) in (\S+)"), _group("UBSAN: {} in {}")),
    ("soft-lockup", re.compile(r"BUG: soft lockup - CPU#\d+ stuck for \d+s!"), _in("BUG: soft lockup")),
    ("hard-lockup", re.compile(r"Watchdog detected hard LOCKUP on cpu (\d+)"), _group("hard LOCKUP on cpu {}")),
    # check_mm() printed nr_ptes without "BUG: " before it became pgtables_bytes.
    ("mm", re.compile(r"(?:BUG: )?(Bad rss-counter state|Bad page map|Bad page state|"
                      r"non-zero (?:pgtables_bytes|nr_ptes) on freeing mm)"), _group("BUG: {}")),
    ("lockdep", re.compile(r"WARNING: (possible circular locking dependency detected|possible recursive locking "
                           r"detected|inconsistent lock state|suspicious RCU usage|bad unlock balance detected!|"
                           r"possible irq lock inversion dependency detected|lock held when returning to user "
                           r"space!)"), _group("possible deadlock: {}")),
    ("bug", re.compile(r"BUG: sleeping function called from invalid context"),
     _group("BUG: sleeping function called from invalid context")),
    ("oops", re.compile(r"BUG: (kernel NULL pointer dereference|unable to handle page fault|"
                        r"unable to handle kernel paging request)"), lambda m, b: _in(f"BUG: {m.group(1)}")(m, b)),
    ("gpf", re.compile(r"general protection fault"), _in("general protection fault")),
    ("bug", re.compile(r"kernel BUG at ([^!]+)!"), _group("kernel BUG at {}")),
    ("warning", re.compile(r"WARNING: CPU: \d+ PID: \d+ at \S+ ([\w.]+)\+0x"), _group("WARNING in {}")),
    ("rcu-stall", re.compile(r"rcu: INFO: rcu_\w+ (?:self-)?detected stalls?"), _in("INFO: rcu detected stall")),
    ("hung-task", re.compile(r"INFO: task ([^:\s]+):\d+ blocked for more than \d+ seconds"),
     _group("INFO: task {} hung")),
    ("oops", re.compile(r"Oops: "), _in("Oops")),
    ("bug", re.compile(r"BUG: (.+)"), _group("BUG: {}")),
]


def _starts(line: str) -> Optional[tuple[str, re.Match[str], Callable[[re.Match[str], list[str]], str]]]:
    for kind, pattern, title in _RULES:
        m = pattern.search(line)
        if m:
            return kind, m, title
    return None


def classify(text: str) -> list[Report]:
    """Every report in `text`, in order.  A report's text runs to its "---[ end trace" line, to the next
    report's first line, or MAX_LINES; an Oops line right after a BUG: line belongs to that report."""
    lines = [_TIMESTAMP.sub("", raw.rstrip("\r")) for raw in text.splitlines()]
    reports: list[Report] = []
    i = 0
    while i < len(lines):
        hit = _starts(lines[i])
        if hit is None:
            i += 1
            continue
        kind, match, title = hit
        j = i + 1
        while j < len(lines) and j - i < MAX_LINES:
            if _END.search(lines[j]):
                j += 1
                break
            nxt = _starts(lines[j])
            # An x86 fault prints "BUG: ..." then "#PF: ..." then "Oops: ...": one report.
            if nxt and not (nxt[0] == "oops" and nxt[1].group(0) == "Oops: " and kind in ("oops", "gpf")):
                # A panic following its cause ("Fatal exception") is its own report.
                break
            j += 1
        body = lines[i:j]
        # WARN() and BUG() print "cut here" and their own message before the report's first line.
        first = next((k for k in range(max(i - 2, 0), i) if lines[k].strip() == _CUT_HERE), i)
        reports.append(Report(kind=kind, title=title(match, body), text="\n".join(lines[first:j]), line=first))
        i = j
    return reports


# Taint bits (include/linux/panic.h / kernel.h, TAINT_*), in bit order.
TAINT_LETTERS = "PFSRMBUDAWCIOELKXTNJ"
# Loading the probe module taints O (out-of-tree) and E (unsigned): not the kernel's fault.
PROBE_TAINT = (1 << 12) | (1 << 13)


def taint_letters(mask: int) -> str:
    return "".join(letter for bit, letter in enumerate(TAINT_LETTERS) if mask >> bit & 1) or "-"
