"""Probe loading and building errors, without a VM: a fake SSH session that
subclasses the real one answers the guest's commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.artifacts.guest_build import build_probe_module
from harness.artifacts.kernel import Kernel
from harness.errors import ArtifactError, GuestError
from harness.events import ABI_VERSION
from harness.guest import Guest
from harness.kernelspec import parse_kernel_spec
from harness.scenarios.probe import load_probe
from harness.vm.ssh import CommandResult, SshSession


class FakeSsh(SshSession):
    """Answers commands from a table; records what was asked."""

    def __init__(self, answers: dict[str, tuple[int, str]]):
        super().__init__(client=None, port=0)  # type: ignore[arg-type]
        self.answers = answers
        self.asked: list[str] = []

    def run(self, argv, timeout=60.0, stdin=None, watch=None) -> CommandResult:
        command = argv if isinstance(argv, str) else " ".join(argv)
        self.asked.append(command)
        status, out = next((v for k, v in self.answers.items() if command.startswith(k)), (0, ""))
        return CommandResult(argv=command, exit_status=status, stdout_bytes=out.encode(), stderr="", duration_s=0.0)


PARAMS = "cat /sys/module/nh_probe/parameters"


def guest(answers) -> Guest:
    return Guest(ssh=FakeSsh(answers), release="6.1.0-56-cloud-amd64", accel="tcg")


def test_record_layout_mismatch_is_detected_at_load():
    g = guest({f"{PARAMS}/corrupt": (1, ""), f"{PARAMS}/abi_version": (0, "1\n"),
               f"{PARAMS}/record_size": (0, "56\n")})
    with pytest.raises(GuestError, match="record layout mismatch: the module has ABI 1 with 56-byte records, "
                                         f"the harness expects ABI {ABI_VERSION} with 64-byte records"):
        load_probe(g)


def test_loaded_module_with_other_corruption_is_reloaded():
    g = guest({f"{PARAMS}/corrupt": (0, "1\n"), f"{PARAMS}/abi_version": (0, f"{ABI_VERSION}\n"),
               f"{PARAMS}/record_size": (0, "64\n")})
    load_probe(g, "off")
    asked = g.ssh.asked  # type: ignore[attr-defined]
    assert "rmmod nh_probe" in asked and any(a.startswith("insmod /opt/nh/nh_probe.ko corrupt=0") for a in asked)


def test_load_failure_carries_the_kernels_message():
    g = guest({f"{PARAMS}/corrupt": (1, ""), "insmod": (1, "insmod: can't insert: Invalid module format"),
               "dmesg": (0, "nh_probe: disagrees about version of symbol module_layout")})
    with pytest.raises(GuestError, match="Invalid module format.*disagrees about version"):
        load_probe(g)


def kernel_with(build_dir: Path) -> Kernel:
    return Kernel(spec=parse_kernel_spec("tree:/x"), release="6.1.0-test", image=Path("/x/bzImage"),
                  modules_dir=Path("/x"), build_dir=build_dir)


def test_module_build_failure_carries_the_compilers_message(tmp_path):
    (tmp_path / "Makefile").write_text("modules:\n\t@echo 'nh_probe.c:10:5: error: boom' >&2; exit 1\n")
    with pytest.raises(ArtifactError, match=r"(?s)building the probe module for 6.1.0-test failed:.*error: boom"):
        build_probe_module(kernel_with(tmp_path), tmp_path / "cache")


def test_module_build_without_a_build_directory(tmp_path):
    with pytest.raises(ArtifactError, match="has no build directory"):
        build_probe_module(kernel_with(tmp_path / "none"), tmp_path / "cache")


STATS = '{"op": "probe-stats", "written": 0, "dropped": 0, "read": 0, "attached_pid": 0, "pid": 5, ' \
        '"exit_status": %d, "signal": %d, "record_size": 64}'
START = '{"op": "start", "pid": 5, "t0": 1}\n'
OOM_LINE = '{"op": "oom", "start": 1, "end": 2, "t0": 3}\n'


def test_workload_killed_by_another_signal_is_an_error_not_an_oom():
    from harness.scenarios.probe import run_mmops
    g = guest({"/opt/nh/bin/nhctl": (0, START + OOM_LINE + STATS % (-1, 15))})
    with pytest.raises(GuestError, match=r"workload was killed by signal 15 \(expected to be killed by signal 9\); "
                                         r"last report: .*\"op\": \"oom\""):
        run_mmops(g, "reap", ["oom:128M"], killed_by=9)


def test_an_oom_that_never_comes_is_reported_with_the_workloads_reason():
    from harness.scenarios.probe import run_mmops
    survived = '{"op": "oom", "error": "survived: the whole allocation fit under the limit"}\n'
    g = guest({"/opt/nh/bin/nhctl": (0, START + OOM_LINE + survived + STATS % (1, 0))})
    with pytest.raises(GuestError, match="workload exited with status 1 .*survived: the whole allocation fit"):
        run_mmops(g, "reap", ["oom:1M"], killed_by=9)


def test_ksmd_timeout_carries_the_counters():
    from harness.scenarios.probe import run_mmops
    ksm = '{"op": "ksm", "name": "K", "full_scans": 1, "full_scans_before": 0, "merging_pages": 0, "t0": 3, "t1": 4}\n'
    err = '{"op": "ksm", "error": "ksmd did not complete two full scans in time (see full_scans)"}\n'
    g = guest({"/opt/nh/bin/nhctl": (0, START + ksm + err + STATS % (1, 0))})
    with pytest.raises(GuestError, match=r"two full scans in time.*\"full_scans\": 1"):
        run_mmops(g, "ksm", ["ksm:K:1"])


def test_garbage_from_the_workload_is_an_error():
    from harness.scenarios.probe import run_mmops
    g = guest({"/opt/nh/bin/nhctl": (0, START + "Segmentation fault\n")})
    with pytest.raises(GuestError, match=r"x: mmops: not JSON \(.*\): 'Segmentation fault'"):
        run_mmops(g, "x", ["map:A:1M"])


def test_a_memcg_that_cannot_be_created():
    from harness.scenarios.memcg import Memcg
    g = guest({"sh -c set -e;": (1, "mkdir: can't create directory '/sys/fs/cgroup/nh-x': File exists"),
               "rmdir": (0, "")})
    with pytest.raises(GuestError, match="memcg /sys/fs/cgroup/nh-x cannot be created: mkdir: can't create"):
        with Memcg(g, "nh-x", 32):
            pass


LATE = '{"op": "probe-stats", "written": 0, "dropped": 0, "read": 0, "attached_pid": 5, "pid": 5, ' \
       '"exit_status": 0, "signal": 0, "record_size": 64, "exec_late_us": %d}'
EXIT_LINE = '{"op": "exit", "t0": 2}\n'


def test_a_workload_exec_seen_late_is_noted_in_the_row_and_an_on_time_one_is_not():
    from harness.scenarios.probe import run_mmops
    g = guest({"/opt/nh/bin/nhctl": (0, START + EXIT_LINE + LATE % 1500), "cat": (0, "")})
    run = run_mmops(g, "exit", ["map:A:1M"])
    assert run.stats.exec_late_us == 1500
    assert g.notes == ["exit: the workload had not exec'd when its close-on-exec pipe closed; "
                       "nhctl waited 1500 us before attaching"]
    g = guest({"/opt/nh/bin/nhctl": (0, START + EXIT_LINE + LATE % 0), "cat": (0, "")})
    run_mmops(g, "exit", ["map:A:1M"])
    assert g.notes == []
