"""Boot 6.1 and 6.12 under TCG: SSH runs a command, QMP says running, and
shutdown leaves no QEMU process, no open port and no private directory."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from harness.artifacts.modules import parse_modinfo, read_module_bytes
from harness.errors import BootTimeout, MachineError
from harness.vm.accel import AccelChoice
from harness.vm.machine import Machine, port_is_free
from harness.vm.qemu_args import READY_MARKER
from tests.guest.conftest import SERIES, TCG, pid_alive, qemu_running

HELLO = Path(__file__).resolve().parent.parent / "data" / "hello_module"


@pytest.mark.parametrize("series", SERIES)
def test_boot_command_qmp_and_clean_shutdown(series, kernels, machine_config, tmp_path):
    booted = kernels[series]
    with Machine(booted.image, machine_config, TCG, tmp_path, log=lambda m: None) as m:
        result = m.ssh.run(["uname", "-r"])
        assert result.ok and result.stdout.strip() == booted.kernel.release
        assert m.monitor is not None and m.monitor.status() == "running"
        cgroup = m.ssh.run("grep -c ' /sys/fs/cgroup cgroup2 ' /proc/mounts; "
                           "grep -c ' /sys/kernel/debug debugfs ' /proc/mounts; "
                           "grep -c ' /sys/kernel/tracing tracefs ' /proc/mounts")
        assert cgroup.stdout.split() == ["1", "1", "1"]
        pid, port, private = m.pid, m.ssh_port, m.private_dir
        assert pid and private is not None and port_is_free(port) is False
        assert private.stat().st_mode & 0o777 == 0o700
        assert m.accel_used == "tcg"
    assert m.shutdown_how == "powerdown"
    assert not pid_alive(pid)
    assert port_is_free(port)
    assert not private.exists()
    assert READY_MARKER in (tmp_path / "console.log").read_text(errors="replace")
    argv = json.loads((tmp_path / "qemu-argv.json").read_text())
    assert argv[argv.index("-accel") + 1] == "tcg,thread=single"


def test_boot_timeout_names_the_problem_and_leaves_nothing(kernels, machine_config, tmp_path):
    config = dataclasses.replace(machine_config, boot_timeout_s=1.0)
    m = Machine(kernels["6.1"].image, config, TCG, tmp_path, log=lambda m: None)
    with pytest.raises(BootTimeout, match=r"^guest not ready after 1 s \(\d+ console bytes\); console tail:"):
        m.boot()
    assert m.proc is None and m.private_dir is None
    argv = json.loads((tmp_path / "qemu-argv.json").read_text())
    assert qemu_running(argv) == []


def test_kernel_panic_at_boot_is_reported_with_the_panic_line(kernels, machine_config, tmp_path):
    # No init at all: the kernel panics before userspace exists.
    config = dataclasses.replace(machine_config, cmdline="rdinit=/nonexistent root=/dev/nonexistent")
    m = Machine(kernels["6.1"].image, config, TCG, tmp_path, log=lambda m: None)
    with pytest.raises(MachineError, match=r"Kernel panic - not syncing"):
        m.boot()
    assert m.proc is None


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this host: nothing to fall back from")
def test_kvm_watchdog_falls_back_to_tcg_or_boots(kernels, machine_config, tmp_path):
    """Forced KVM with the watchdog: where KVM cannot boot a stock kernel (a
    paravirtual /dev/kvm), the machine must still come up, under TCG, and say so."""
    config = dataclasses.replace(machine_config, kvm_watchdog_s=8.0)
    forced = AccelChoice("kvm", "forced by the test", watchdog=True)
    with Machine(kernels["6.1"].image, config, forced, tmp_path, log=lambda m: None) as m:
        assert m.ssh.run(["true"]).ok
        if m.accel_used == "tcg":
            assert "fell back to TCG" in m.accel_reason
        else:
            assert m.accel_used == "kvm"


@pytest.mark.parametrize("series", SERIES)
def test_module_builds_against_the_kernels_own_build_dir(series, kernels, tmp_path):
    kernel = kernels[series].kernel
    assert kernel.build_dir is not None
    work = tmp_path / "hello"
    work.mkdir()
    for f in HELLO.iterdir():
        (work / f.name).write_bytes(f.read_bytes())
    proc = subprocess.run(["make", "-s", "-C", str(kernel.build_dir), f"M={work}", "modules"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    info = parse_modinfo(read_module_bytes(work / "hello.ko"))
    assert info["vermagic"][0].split()[0] == kernel.release



def test_a_debian_version_that_does_not_exist(tmp_path):
    from harness.artifacts.kernel import resolve_kernel
    from harness.errors import ArtifactError
    from harness.kernelspec import parse_kernel_spec

    with pytest.raises(ArtifactError, match=r"^Debian kernel 6.1.0-999-cloud-amd64 does not exist: apt has no "
                                            r"package linux-image-6.1.0-999-cloud-amd64$"):
        resolve_kernel(parse_kernel_spec("debian:6.1.0-999"), tmp_path)
