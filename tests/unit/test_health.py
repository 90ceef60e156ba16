"""What the runner makes of the kernel's health around a scenario, and of a full run directory."""

import errno
import threading
import xml.etree.ElementTree as ET

import pytest

from harness.config import Config, ScenarioConfig
from harness.console_reports import Report
from harness.errors import MachineLost, OutputError
from harness.kernelspec import parse_kernel_spec
from harness.report import junit_xml
from harness.health import AFTER_REPORT, judge_health as judge, reboot_reason
from harness.runner import Run
from harness.verdict import Result, Verdict

PASS = Verdict("pass", (), ("a note",))
WARN = Report(kind="warning", title="WARNING in nh_ioctl", text="WARNING: ...", line=3)


def test_a_clean_scenario_keeps_its_verdict():
    assert judge(PASS, None, [], 0, 0) == PASS


def test_a_kernel_report_fails_a_passing_scenario_with_its_title_first():
    v = judge(Verdict("fail", ("model finding",)), None, [WARN, WARN], 0, 1 << 9)
    assert v.status == "fail"
    assert v.findings == ("kernel warning: WARNING in nh_ioctl (x2)",
                          "kernel taint: W set during the scenario (tainted 0 -> 512)", "model finding")


def test_the_probes_own_taint_is_masked():
    assert judge(PASS, None, [], 0, (1 << 12) | (1 << 13)) == PASS
    assert judge(PASS, None, [], 1 << 9, 1 << 9) == PASS         # already tainted before: not this scenario's


def test_a_panic_fails_and_other_losses_are_errors():
    panic = Report(kind="panic", title="Kernel panic - not syncing: x", text="", line=0)
    v = judge(None, MachineLost("panic", "guest panicked while a scenario ran: Kernel panic"), [panic], 0, 0)
    assert v.status == "fail" and v.findings == ("kernel panic: Kernel panic - not syncing: x",)
    assert v.notes == ("detected: guest panicked while a scenario ran: Kernel panic",)
    for kind in ("hang", "qemu-exited", "ssh-lost"):
        v = judge(None, MachineLost(kind, "what happened"), [], 0, 0)
        assert v.status == "error" and v.findings == (f"{kind}: what happened",)


BUG = Report(kind="bug", title="kernel BUG at arch/x86/kvm/mmu/tdp_mmu.c:485", text="", line=0)


def test_the_kernels_report_leads_where_the_scenario_errored():
    """A VMM killed by the kernel's BUG is a consequence: the BUG is the story, and the row fails."""
    v = judge(Verdict("error", ("minivmm exited (status -1) instead of answering 'destroy'",)), None, [BUG], 0,
              1 << 7)
    assert v.status == "fail"
    assert v.findings == ("kernel bug: kernel BUG at arch/x86/kvm/mmu/tdp_mmu.c:485",
                          "kernel taint: D set during the scenario (tainted 0 -> 128)",
                          "minivmm exited (status -1) instead of answering 'destroy'")


def test_a_hang_with_a_report_fails_with_the_report_first_and_one_without_is_an_error():
    lockup = Report(kind="soft-lockup", title="BUG: soft lockup in queued_write_lock_slowpath", text="", line=0)
    v = judge(None, MachineLost("hang", "no answer over SSH"), [lockup], 0, 0)
    assert v.status == "fail"
    assert v.findings == ("kernel soft-lockup: BUG: soft lockup in queued_write_lock_slowpath", "hang: no answer over SSH")
    assert judge(None, MachineLost("hang", "no answer over SSH"), [], 0, 0).status == "error"


def test_a_skip_or_an_error_with_only_new_taint_fails():
    assert judge(Verdict("skip", ("no KVM",)), None, [], 0, 1 << 9).status == "fail"
    assert judge(Verdict("error", ("x",)), None, [], 0, 1 << 14).findings[0].startswith("kernel taint: L")


def _report(kind: str, title: str) -> Report:
    return Report(kind=kind, title=title, text="", line=0)


@pytest.mark.parametrize("kind, title, reboot", [
    ("warning", "WARNING in nh_ioctl", False),
    ("lockdep", "possible deadlock: possible circular locking dependency detected", False),
    ("bug", "BUG: sleeping function called from invalid context", False),
    ("mm", "BUG: Bad rss-counter state", False),
    ("mm", "BUG: non-zero pgtables_bytes on freeing mm", False),
    ("mm", "BUG: Bad page state", True),
    ("mm", "BUG: Bad page map", True),
    ("panic", "Kernel panic - not syncing: x", True),
    ("oops", "BUG: kernel NULL pointer dereference in nh_debug_oops", True),
    ("gpf", "general protection fault in f", True),
    ("bug", "kernel BUG at mm/rmap.c:1", True),
    ("bug", "BUG: scheduling while atomic", True),
    ("soft-lockup", "BUG: soft lockup in f", True),
    ("hard-lockup", "hard LOCKUP on cpu 1", True),
    ("rcu-stall", "INFO: rcu detected stall in f", True),
    ("hung-task", "INFO: task nhctl hung", True),
    ("kasan", "KASAN: use-after-free in f", True),
    ("kfence", "KFENCE: out-of-bounds read in f", True),
    ("ubsan", "UBSAN: shift-out-of-bounds in f", True),
    ("some-new-kind", "whatever", True),
])
def test_the_reboot_policy_row_by_row(kind, title, reboot):
    reason = reboot_reason([_report(kind, title)], 0)
    assert (reason is not None) == reboot
    if reboot:
        assert title in reason


def test_every_kind_the_classifier_reports_has_a_policy_row():
    from harness.console_reports import _RULES
    assert {kind for kind, _, _ in _RULES} <= {rule.kind for rule in AFTER_REPORT}


def test_taint_d_or_l_reboots_and_w_keeps():
    assert reboot_reason([], 1 << 9) is None
    assert reboot_reason([], 1 << 7) == "kernel taint D set"
    assert reboot_reason([], 1 << 14) == "kernel taint L set"
    assert reboot_reason([WARN], 1 << 9) is None


def test_junit_carries_the_console_slice():
    consoles = {"k/fault": "WARNING: CPU: 0 PID: 1 at x nh_ioctl+0x1/0x2\n\x07bell\n"}
    r = Result(kernel="k", kernel_spec="debian:6.1", accel="tcg", scenario="fault", verdict="fail",
               findings=("kernel warning: WARNING in nh_ioctl",), duration_s=1.0, seed=1, artifacts="k/fault")
    case = ET.fromstring(junit_xml([r], consoles)).find("testcase")
    assert case.find("failure").get("message") == "kernel warning: WARNING in nh_ioctl"
    out = case.findtext("system-out")
    assert "--- console ---" in out and "nh_ioctl+0x1/0x2" in out and "\\x07bell" in out


def test_junit_and_the_summary_survive_control_characters_and_bad_utf8():
    """Findings quote the guest: ESC, NUL, invalid UTF-8 (decoded with replacement) and an OSC 52
    clipboard write must neither break junit.xml nor reach a terminal."""
    from harness.report import summary_table
    nasty = "BUG: \x1b]52;c;ZXZpbA==\x07 \x00 " + b"\xff\xfe".decode(errors="replace") + " \x9b2J \ud800"
    r = Result(kernel="k\x1b[31m", kernel_spec="debian:6.1", accel="tcg", scenario="fault", verdict="fail",
               findings=(nasty,), notes=(nasty,), reports=(nasty,), duration_s=1.0, seed=1, artifacts="k/fault")
    root = ET.fromstring(junit_xml([r], {"k/fault": nasty}))
    case = root.find("testcase")
    message = case.find("failure").get("message")
    assert "\x1b" not in message and "\\x1b]52" in message and "\\x00" in message and "\\x9b" in message
    table = summary_table([r])
    assert not any(ord(c) < 32 and c not in "\n\t" for c in table)
    clean = r.printable()
    assert all("\x1b" not in t and "\x00" not in t for t in (*clean.findings, *clean.notes, *clean.reports, clean.kernel))


def test_a_full_run_directory_stops_the_run_with_a_clear_error(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("harness.runner.write_reports", full)
    run = Run(config=Config(kernels=(parse_kernel_spec("debian:6.1"),), scenarios=(ScenarioConfig("smoke"),)),
              out_dir=tmp_path / "run", log=lambda line: None)
    with pytest.raises(OutputError) as e:
        run.execute()
    assert "No space left on device" in str(e.value) and str(tmp_path / "run") in str(e.value)


class _Exited:
    def poll(self):
        return 0


class _Console:
    write_error = ""

    def __init__(self, panic_line: str):
        self.panicked = threading.Event()
        self.panic_line = panic_line
        if panic_line:
            self.panicked.set()

    def close(self, timeout: float) -> None:
        pass

    def tail(self) -> str:
        return "console tail"


def _exited_machine(panic_line: str):
    from harness.vm.machine import Machine
    m = Machine.__new__(Machine)
    m.proc, m.console, m.monitor = _Exited(), _Console(panic_line), object()   # not reached: QEMU is gone
    m.stderr_tail = lambda: ""
    return m


def test_an_early_boot_panic_that_exits_qemu_is_named_a_panic():
    """Before pvpanic loads, panic=-1 reboots and -no-reboot exits QEMU with status 0."""
    import pytest
    from harness.errors import MachineLost
    with pytest.raises(MachineLost) as e:
        _exited_machine("Kernel panic - not syncing: Fatal exception in interrupt")._check_alive("while booting")
    assert e.value.kind == "panic" and "Fatal exception in interrupt" in str(e.value) and "exited with status 0" in str(e.value)
    with pytest.raises(MachineLost) as e:
        _exited_machine("")._check_alive("while booting")
    assert e.value.kind == "qemu-exited"
