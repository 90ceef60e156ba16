"""Kernel crashes, warnings, hangs and lost connections injected into real guests in the middle
of a scenario: each is named in its own scenario's result, the guest is rebooted when it is lost,
the scenarios after it still run, and nothing (QEMU, port, private directory) is left behind."""

from __future__ import annotations

import glob
import json
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.cli import main
from tests.guest.conftest import cmdline_of, pid_alive, pids


def private_dirs() -> set[str]:
    return set(glob.glob(f"{tempfile.gettempdir()}/notifier-harness-*"))


def run(config_text: str, tmp_path: Path, name: str, *extra: str) -> tuple[int, Path]:
    config = tmp_path / f"{name}.yaml"
    config.write_text(config_text)
    out = tmp_path / name
    return main(["run", "-c", str(config), "--out", str(out), *extra]), out


def rows(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["results"]


def qemu_pids() -> set[int]:
    """Every live QEMU on the host (the tests run one at a time, so a new one is the run's)."""
    return {pid for pid in pids() if "qemu-system" in (cmdline_of(pid) or [""])[0] and pid_alive(pid)}


def assert_nothing_left(qemu_before: set[int], dirs_before: set[str]) -> None:
    """No QEMU of any boot is alive (and so no forwarded port is held), no private directory is left."""
    assert qemu_pids() <= qemu_before
    assert private_dirs() <= dirs_before


PANIC_SECOND = """
kernels: [debian:6.1]
machine: {accel: tcg}
scenarios:
  - smoke
  - {name: fault, fault: panic, timeout: 60}
  - mm-basic
seed: 5
"""


def test_a_panic_in_the_second_scenario_fails_it_and_the_rest_still_run(kernels, tmp_path, capsys):
    before, qemu_before = private_dirs(), qemu_pids()
    code, out = run(PANIC_SECOND, tmp_path, "panic")
    printed = capsys.readouterr().out
    assert code == 1, printed
    smoke, fault, mm = rows(out)
    assert (smoke["verdict"], fault["verdict"], mm["verdict"]) == ("pass", "fail", "pass")
    assert fault["findings"][0] == "kernel panic: Kernel panic - not syncing: sysrq triggered crash"
    assert fault["reports"] == ["Kernel panic - not syncing: sysrq triggered crash"]
    case = ET.parse(out / "junit.xml").getroot().findall("testcase")[1]
    failure = case.find("failure")
    assert failure is not None and "Kernel panic - not syncing" in failure.get("message", "")
    assert "sysrq triggered crash" in (case.findtext("system-out") or "")
    assert json.loads((out / "results.json").read_text())["run"]["kernels"][0]["boots"] == 2
    repro_line = f"repro: notifier-harness repro {out / fault['artifacts']}"
    assert repro_line in printed
    assert_nothing_left(qemu_before, before)

    # repro reruns exactly that scenario (the panic, with its settings and seed) ...
    again = tmp_path / "again"
    assert main(["repro", str(out / fault["artifacts"]), "--out", str(again)]) == 1
    [row] = rows(again)
    assert (row["scenario"], row["verdict"], row["seed"]) == ("fault", "fail", 5)
    assert row["reports"] == fault["reports"]
    # ... and compare sees no change between the two (the repro against the run: the run's other rows
    # are only in B, not missing from it), but a regression against a clean run.
    assert main(["compare", str(again), str(out)]) == 0
    capsys.readouterr()
    clean_code, clean = run(PANIC_SECOND.replace("fault: panic", "fault: none"), tmp_path, "clean")
    assert clean_code == 0
    assert main(["compare", str(clean), str(out)]) == 1
    table = capsys.readouterr().out
    assert "REGRESSED  fault" in table and "PASS -> FAIL" in table
    assert "+ kernel panic: Kernel panic - not syncing: sysrq triggered crash" in table
    assert main(["compare", str(out), str(clean)]) == 0
    assert_nothing_left(qemu_before, before)


def test_every_fault_is_named_in_its_own_scenario(kernels, tmp_path, capsys):
    before, qemu_before = private_dirs(), qemu_pids()
    out = tmp_path / "faults"
    code = main(["run", "-c", "configs/selftest-faults.yaml", "--accel", "tcg", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 2, printed       # infrastructure errors (hang, lost machine) outrank test failures
    r = rows(out)
    got = [(x["verdict"], x["findings"][0].split(":")[0] if x["findings"] else "") for x in r]
    if got[3][1] in ("kernel soft-lockup", "kernel rcu-stall"):    # the two race to be reported first
        got[3] = ("fail", "kernel lockup")
    assert got == [("pass", ""), ("fail", "kernel warning"), ("fail", "kernel hung-task"), ("fail", "kernel lockup"),
                   ("fail", "kernel oops"), ("fail", "kernel oops"), ("error", "ssh-lost"), ("error", "qemu-exited"),
                   ("error", "hang"), ("error", "hang"), ("pass", "")], printed
    _, warn, hung, lockup, oops, locked, ssh, killed, stopped, spun, last = r
    assert warn["findings"][0] == "kernel warning: WARNING in nh_ioctl"
    assert oops["findings"][0] == "kernel oops: BUG: kernel NULL pointer dereference in nh_debug_oops"
    assert locked["findings"][0] == "kernel oops: BUG: kernel NULL pointer dereference in nh_debug_oops"
    assert any(f.startswith("kernel soft-lockup: BUG: soft lockup in nh_ioctl") for f in lockup["findings"])
    assert any(f.startswith("kernel rcu-stall: INFO: rcu detected stall in nh_ioctl") for f in lockup["findings"])
    assert any(f.startswith("kernel taint: L") for f in lockup["findings"])
    assert hung["findings"][0].startswith("kernel hung-task: INFO: task nhctl hung")
    assert "dropped while running: sleep 20" in ssh["findings"][0]
    assert "QEMU was killed by signal 9" in killed["findings"][0]
    assert "state T (stopped" in stopped["findings"][0]
    hang_txt = (out / spun["artifacts"] / "hang.txt").read_text()
    assert "info registers:" in hang_txt and "RIP=" in hang_txt
    # A WARN keeps the guest; a hung task, a lockup and each Oops reboot it, and so does each lost machine.
    rebooted = [x["artifacts"].split("/")[-1] for x in r if any("is rebooted before the next one" in n
                                                                   for n in x["notes"])]
    assert rebooted == ["fault.3", "fault.4", "fault.5", "fault.6"], rebooted
    assert json.loads((out / "results.json").read_text())["run"]["kernels"][0]["boots"] == 9
    assert_nothing_left(qemu_before, before)


OOPS_THEN_CLEAN = """
kernels: [debian:6.1, debian:6.12]
machine: {accel: tcg}
scenarios:
  - {name: fault, fault: oops, timeout: 60}
  - smoke
  - mm-basic
  - {name: fault, fault: oops-locked, timeout: 60}
  - mm-basic
seed: 3
"""


def test_an_oops_reboots_the_guest_and_the_next_scenarios_pass_on_their_own_slice(kernels, tmp_path, capsys):
    """The Oops fails its own row with its title first; smoke after it judges only the boot before the
    first scenario (not the previous row's Oops); an Oops that leaves a lock held costs a reboot, not
    the next row's time limit."""
    before, qemu_before = private_dirs(), qemu_pids()
    code, out = run(OOPS_THEN_CLEAN, tmp_path, "oops")
    printed = capsys.readouterr().out
    assert code == 1, printed
    r = rows(out)
    assert [(x["scenario"], x["verdict"]) for x in r] == [("fault", "fail"), ("smoke", "pass"), ("mm-basic", "pass"),
                                                         ("fault", "fail"), ("mm-basic", "pass")] * 2, printed
    for x in r:
        assert x["duration_s"] < 40, x       # nobody waited out a time limit
        if x["scenario"] == "fault":
            assert x["findings"][0] == "kernel oops: BUG: kernel NULL pointer dereference in nh_debug_oops"
            assert any("the guest is rebooted before the next one" in n for n in x["notes"])
    assert [k["boots"] for k in json.loads((out / "results.json").read_text())["run"]["kernels"]] == [3, 3]
    assert_nothing_left(qemu_before, before)
