"""What the kernel's health around a scenario means: for its verdict, and for the guest.

Pure policy, beside the console classifier it reads (harness/console_reports.py):
- the verdict: a kernel report in the scenario's console slice fails it with the
  report's title first, whatever the scenario itself concluded (a VMM killed by
  the kernel's BUG is a consequence, not the story); error is left for what no
  report explains: a hang without one, QEMU gone, SSH lost;
- the guest: a kernel that has Oopsed, locked up or corrupted memory is not a
  kernel to keep testing on, so the runner reboots it before the next
  scenario; a WARN alone keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from harness.console_reports import PROBE_TAINT, Report, taint_letters
from harness.errors import MachineLost
from harness.verdict import Verdict

# Taint bits that leave the kernel unreliable (include/linux/panic.h): D, the kernel died (Oops/BUG),
# and L, a soft lockup happened.  W (a WARN) does not.
TAINT_DIE = 1 << 7
TAINT_SOFTLOCKUP = 1 << 14
UNRELIABLE_TAINT = TAINT_DIE | TAINT_SOFTLOCKUP


@dataclass(frozen=True)
class AfterReport:
    kind: str
    title_prefix: str    # "" matches every title of the kind
    reboot: bool
    why: str


# First match wins; a report of a kind not listed reboots (an unknown report is not a reason to trust
# the kernel).  The kinds are console_reports.py's.
AFTER_REPORT: tuple[AfterReport, ...] = (
    AfterReport("warning", "", False, "a WARN taints W and the kernel goes on"),
    AfterReport("lockdep", "", False, "lockdep reports once and turns itself off; the locks still work"),
    AfterReport("bug", "BUG: sleeping function called from invalid context", False,
                "might_sleep() prints and returns"),
    AfterReport("mm", "BUG: Bad rss-counter state", False, "an accounting report at mm teardown"),
    AfterReport("mm", "BUG: non-zero", False, "an accounting report at mm teardown"),
    AfterReport("mm", "BUG: Bad page", True, "a page's state or mapping is corrupt"),
    AfterReport("panic", "", True, "the kernel stopped"),
    AfterReport("oops", "", True, "an Oops kills the task, possibly holding locks (taint D)"),
    AfterReport("gpf", "", True, "a general protection fault is an Oops (taint D)"),
    AfterReport("bug", "", True, "BUG() is an Oops (taint D)"),
    AfterReport("soft-lockup", "", True, "a CPU was stuck (taint L)"),
    AfterReport("hard-lockup", "", True, "a CPU was stuck with interrupts off"),
    AfterReport("rcu-stall", "", True, "a grace period could not end"),
    AfterReport("hung-task", "", True, "a task is stuck in D state and stays so"),
    AfterReport("kasan", "", True, "memory was corrupted"),
    AfterReport("kfence", "", True, "memory was corrupted"),
    AfterReport("ubsan", "", True, "undefined behaviour: nothing after it can be trusted"),
)


def after_report(report: Report) -> AfterReport:
    for rule in AFTER_REPORT:
        if rule.kind == report.kind and report.title.startswith(rule.title_prefix):
            return rule
    return AfterReport(report.kind, "", True, "a report the policy does not know")


def reboot_reason(reports: Sequence[Report], taint_added: int) -> Optional[str]:
    """Why the guest must be rebooted before the next scenario, or None to keep it."""
    for r in reports:
        rule = after_report(r)
        if rule.reboot:
            return f"kernel {r.kind}: {r.title} ({rule.why})"
    bad = taint_added & UNRELIABLE_TAINT
    if bad:
        return f"kernel taint {taint_letters(bad)} set"
    return None


def report_titles(reports: Sequence[Report]) -> list[str]:
    """`kernel KIND: TITLE`, repeats counted: a report printed ten times is one finding (x10)."""
    counts: dict[str, int] = {}
    for r in reports:
        key = f"kernel {r.kind}: {r.title}"
        counts[key] = counts.get(key, 0) + 1
    return [key + (f" (x{n})" if n > 1 else "") for key, n in counts.items()]


def judge_health(verdict: Optional[Verdict], lost: Optional[MachineLost], reports: Sequence[Report],
                 taint_before: int, taint_after: int) -> Verdict:
    """The scenario's own verdict, overruled by what happened to the kernel meanwhile.  A kernel report
    or new taint fails it, titles first; a loss (hang, QEMU gone, SSH gone) that no report explains
    makes it an error; a panic is a failure named by its report."""
    titles = report_titles(reports)
    if lost is not None:
        if lost.kind == "panic":
            # Console line or QMP event, whichever came first, says the same: keep it a note, so
            # that two runs of one panic compare equal.
            return Verdict("fail", tuple(titles) or (str(lost),), (f"detected: {lost}",))
        if titles:
            return Verdict("fail", (*titles, f"{lost.kind}: {lost}"))
        return Verdict("error", (f"{lost.kind}: {lost}",))
    assert verdict is not None
    new_taint = taint_after & ~taint_before & ~PROBE_TAINT
    extra = list(titles)
    if new_taint:
        extra.append(f"kernel taint: {taint_letters(new_taint)} set during the scenario "
                     f"(tainted {taint_before} -> {taint_after})")
    if not extra:
        return verdict
    return Verdict("fail", (*extra, *verdict.findings), verdict.notes)
