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
from harness.runner import Run
from harness.verdict import Result, Verdict

judge = Run._judge_health
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


def test_an_error_stays_an_error_with_the_report_added():
    v = judge(Verdict("error", ("workload exited",)), None, [WARN], 0, 0)
    assert v.status == "error" and v.findings == ("workload exited", "kernel warning: WARNING in nh_ioctl")


def test_junit_carries_the_console_slice():
    consoles = {"k/fault": "WARNING: CPU: 0 PID: 1 at x nh_ioctl+0x1/0x2\n\x07bell\n"}
    r = Result(kernel="k", kernel_spec="debian:6.1", accel="tcg", scenario="fault", verdict="fail",
               findings=("kernel warning: WARNING in nh_ioctl",), duration_s=1.0, seed=1, artifacts="k/fault")
    case = ET.fromstring(junit_xml([r], consoles)).find("testcase")
    assert case.find("failure").get("message") == "kernel warning: WARNING in nh_ioctl"
    out = case.findtext("system-out")
    assert "--- console ---" in out and "nh_ioctl+0x1/0x2" in out and "?bell" in out


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
