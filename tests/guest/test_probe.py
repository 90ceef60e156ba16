"""The probe module in a real guest: scenarios pass on 6.1 and 6.12, the
corrupted stream is caught, and every bad input is a clear error."""

from __future__ import annotations

import json

import pytest

from harness.artifacts.guest_build import GUEST_BIN, GUEST_PROBE
from harness.cli import main
from harness.errors import GuestError
from harness.guest import Guest
from harness.scenarios.probe import load_probe, run_mmops
from harness.vm.machine import Machine
from tests.guest.conftest import TCG

NHCTL = f"{GUEST_BIN}/nhctl"


@pytest.fixture(scope="module")
def guest61(kernels, tmp_path_factory):
    from harness.config import MachineConfig
    config = MachineConfig(cpus=2, memory_mib=1024, accel="tcg", boot_timeout_s=120)
    booted = kernels["6.1"]
    with Machine(booted.image, config, TCG, tmp_path_factory.mktemp("probe61"), log=lambda m: None) as m:
        yield Guest(ssh=m.ssh, release=booted.kernel.release, accel="tcg")


def test_probe_scenarios_pass_on_6_1_and_6_12(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "-c", "configs/matrix.yaml", "--accel", "tcg", "--out", str(out),
                 "--scenario", "mm-basic", "--scenario", "thp-split", "--scenario", "cow", "--scenario", "exit-release"])
    printed = capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    assert code == 0, printed
    rows = {(r["kernel"], r["scenario"]): r for r in doc["results"]}
    assert len(rows) == 8 and all(r["verdict"] == "pass" for r in rows.values())
    # Each run's evidence is kept: operations, events and (empty) findings.
    kdir = out / kernels["6.12"].kernel.release / "thp-split"
    assert (kdir / "debugfs.events.txt").read_text().count("start CLEAR") >= 6
    assert json.loads((kdir / "debugfs.findings.json").read_text()) == []


def test_corrupted_stream_fails_with_the_named_finding(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "-c", "configs/selftest-corrupt.yaml", "--kernel", "debian:6.1", "--accel", "tcg",
                 "--out", str(out)])
    capsys.readouterr()
    assert code == 1
    rows = {r["scenario"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert rows["mm-basic"]["verdict"] == "fail"
    dropped = rows["mm-basic"]["findings"][0]
    assert "[pairing]" in dropped and "(#1-no end)" in dropped
    assert rows["thp-split"]["verdict"] == "fail"
    assert any("[end-range]" in f and "does not match its start" in f for f in rows["thp-split"]["findings"])


def test_attach_to_a_missing_pid_twice_and_read_before_attach(guest61):
    guest61.run(["rmmod", "nh_probe"])
    load_probe(guest61)
    before = guest61.run([NHCTL, "read"])
    assert before.exit_status == 2 and "No such file or directory" in before.stdout   # ENOENT: never attached
    missing = guest61.run([NHCTL, "attach", "999999"])
    assert missing.exit_status == 2 and "NH_IOC_ATTACH: No such process" in missing.stdout
    sleeper = guest61.check(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"]).strip()
    first = guest61.run([NHCTL, "attach", sleeper])
    assert first.ok and json.loads(first.stdout)["record_size"] == 64
    twice = guest61.run([NHCTL, "attach", sleeper])
    assert twice.exit_status == 2 and "Device or resource busy" in twice.stdout
    guest61.check([NHCTL, "detach"])
    guest61.check(["kill", sleeper])


def test_module_unloads_cleanly_while_attached(guest61):
    load_probe(guest61)
    sleeper = guest61.check(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"]).strip()
    guest61.check([NHCTL, "attach", sleeper])
    guest61.check(["rmmod", "nh_probe"])
    assert guest61.run(["test", "-e", "/sys/module/nh_probe"]).exit_status == 1
    log = guest61.dmesg()
    assert "WARNING" not in log and "BUG" not in log
    guest61.check(["kill", sleeper])


def test_attach_to_an_exited_process_and_a_workload_that_cannot_start(guest61):
    load_probe(guest61)
    gone = guest61.check(["sh", "-c", "true & p=$!; wait $p; echo $p"]).strip()
    result = guest61.run([NHCTL, "attach", gone])
    assert result.exit_status == 2 and "NH_IOC_ATTACH: No such process" in result.stdout
    result = guest61.run([NHCTL, "run", "--events", "/tmp/x.bin", "--", "/nonexistent"])
    assert result.exit_status == 2
    assert json.loads(result.stdout.splitlines()[-1]) == {"error": "exec workload: No such file or directory"}


def test_a_workload_error_is_reported_with_its_reason(guest61):
    load_probe(guest61)
    with pytest.raises(GuestError, match=r"workload exited with status 1: munmap: Invalid argument; "
                                         r"last report: .*\"op\": \"map\""):
        run_mmops(guest61, "bad", ["map:A:1M:nothp", "munmap:A:3:4K"])


def test_a_module_that_fails_to_load_is_reported_with_the_kernels_message(guest61):
    guest61.run(["rmmod", "nh_probe"])
    guest61.check(["cp", GUEST_PROBE, "/tmp/probe.ko.saved"])
    guest61.check(["truncate", "-s", "4096", GUEST_PROBE])
    try:
        with pytest.raises(GuestError, match="loading the probe module failed: .*insmod"):
            load_probe(guest61)
    finally:
        guest61.check(["cp", "/tmp/probe.ko.saved", GUEST_PROBE])
