"""The console classifier on console slices recorded from real guests (tests/data/console: the
`fault` scenario on Debian 6.1 and 6.12 under TCG), and on report headers written from the
kernel's format strings for the kinds a stock kernel cannot be made to print (KASAN, KFENCE,
UBSAN and lockdep need debug builds; the mm ones need a kernel bug)."""

from pathlib import Path

import pytest

from harness.console_reports import PROBE_TAINT, classify, taint_letters

DATA = Path(__file__).resolve().parent.parent / "data" / "console"


def reports(name: str) -> list[tuple[str, str]]:
    return [(r.kind, r.title) for r in classify((DATA / name).read_text())]


def test_panic_recorded_on_6_1():
    assert reports("6.1-panic.log") == [("panic", "Kernel panic - not syncing: sysrq triggered crash")]


def test_warning_recorded_on_6_1_is_titled_by_its_function():
    (report,) = classify((DATA / "6.1-warn.log").read_text())
    assert (report.kind, report.title) == ("warning", "WARNING in nh_ioctl")
    assert report.text.startswith("------------[ cut here ]------------\nnh_probe: warning requested through "
                                  "NH_IOC_DEBUG\nWARNING: CPU: 0 PID: 134")
    assert "Call Trace:" in report.text
    assert report.text.rstrip().endswith("---[ end trace 0000000000000000 ]---")


def test_null_dereference_and_its_oops_are_one_report():
    (report,) = classify((DATA / "6.1-oops.log").read_text())
    assert (report.kind, report.title) == ("oops", "BUG: kernel NULL pointer dereference in nh_debug_oops")
    assert "Oops: 0002" in report.text and "RIP: 0010:nh_debug_oops" in report.text


def test_soft_lockup_and_rcu_stall_recorded_on_6_12():
    assert reports("6.12-lockup.log") == [("rcu-stall", "INFO: rcu detected stall in nh_ioctl"),
                                          ("soft-lockup", "BUG: soft lockup in nh_ioctl")]


def test_hung_task_recorded_on_6_12():
    assert reports("6.12-hung-task.log") == [("hung-task", "INFO: task nhctl hung")] * 2


def test_a_hang_on_every_cpu_shows_its_stall():
    assert ("rcu-stall", "INFO: rcu detected stall in nh_ioctl") in reports("6.12-hang.log")


def test_a_clean_boot_has_no_report():
    text = (DATA / "6.1-panic.log").read_text().split("notifier-harness: begin")[0]
    assert classify(text) == []


@pytest.mark.parametrize("text, kind, title", [
    ("[ 1.0] BUG: KASAN: slab-use-after-free in mmu_notifier_release+0x12/0x40\n"
     "[ 1.0] Read of size 8 at addr ffff888003a1b000 by task a/1\n", "kasan",
     "KASAN: slab-use-after-free in mmu_notifier_release"),
    ("BUG: KFENCE: out-of-bounds read in nh_attach+0x1/0x2\n", "kfence", "KFENCE: out-of-bounds read in nh_attach"),
    ("UBSAN: shift-out-of-bounds in mm/mmu_notifier.c:300:5\n", "ubsan",
     "UBSAN: shift-out-of-bounds in mm/mmu_notifier.c:300:5"),
    ("WARNING: possible circular locking dependency detected\n6.1.0 #1 Not tainted\n", "lockdep",
     "possible deadlock: possible circular locking dependency detected"),
    ("BUG: Bad rss-counter state mm:00000000 type:MM_ANONPAGES val:1\n", "mm", "BUG: Bad rss-counter state"),
    ("BUG: Bad page map in process a  pte:8000000 pmd:1\n", "mm", "BUG: Bad page map"),
    ("BUG: Bad page state in process a  pfn:1234\n", "mm", "BUG: Bad page state"),
    ("BUG: non-zero pgtables_bytes on freeing mm: 4096\n", "mm", "BUG: non-zero pgtables_bytes on freeing mm"),
    ("non-zero nr_ptes on freeing mm: 1\n", "mm", "BUG: non-zero nr_ptes on freeing mm"),
    ("general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP\n"
     "RIP: 0010:__mmu_notifier_invalidate_range_start+0x3a/0x1c0\n", "gpf",
     "general protection fault in __mmu_notifier_invalidate_range_start"),
    ("kernel BUG at mm/mmu_notifier.c:123!\n", "bug", "kernel BUG at mm/mmu_notifier.c:123"),
    ("BUG: sleeping function called from invalid context at mm/memory.c:10\n", "bug",
     "BUG: sleeping function called from invalid context"),
    ("WARNING: CPU: 1 PID: 7 at mm/mmu_notifier.c:290 __mmu_notifier_invalidate_range_start+0x1/0x2\n",
     "warning", "WARNING in __mmu_notifier_invalidate_range_start"),
])
def test_report_headers_from_the_kernels_formats(text, kind, title):
    assert [(r.kind, r.title) for r in classify(text)] == [(kind, title)]


def test_ordinary_lines_are_not_reports():
    assert classify("INFO: NMI handler (nmi_cpu_backtrace_handler) took too long to run: 10.427 msecs\n"
                    "oom_reaper: reaped process 12 (mmops)\nnotifier-harness: begin smoke\n") == []


def test_taint_letters_and_the_probes_own_taint():
    assert taint_letters(1 << 9 | 1 << 14) == "WL"
    assert taint_letters(PROBE_TAINT) == "OE" and taint_letters(0) == "-"
