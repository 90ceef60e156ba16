"""The accelerator decision, from a faked device and a faked /proc/cpuinfo."""

import pytest

from harness.errors import MachineError
from harness.vm.accel import HostVirt, choose_accel, probe_host, read_cpu_flags

CPUINFO_PLAIN = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr hypervisor\n"
CPUINFO_SVM = "processor\t: 0\nflags\t\t: fpu vme svm npt\n"
CPUINFO_VMX = "processor\t: 0\nflags\t\t: fpu vmx ept\n"


@pytest.fixture
def fake(tmp_path):
    def make(device: str, cpuinfo: str):
        dev = tmp_path / "kvm"
        if device == "rw":
            dev.write_bytes(b"")
        elif device == "unopenable":
            dev.mkdir()          # opening a directory O_RDWR fails, even as root
        info = tmp_path / "cpuinfo"
        info.write_text(cpuinfo)
        return probe_host(dev, info)
    return make


def test_cpu_flags():
    assert read_cpu_flags(CPUINFO_SVM) == {"fpu", "vme", "svm", "npt"}
    assert read_cpu_flags("nothing here") == frozenset()


def test_auto_picks_kvm_only_with_device_and_vmx_or_svm(fake):
    for info, virt in ((CPUINFO_SVM, "svm"), (CPUINFO_VMX, "vmx")):
        choice = choose_accel("auto", fake("rw", info))
        assert choice.accel == "kvm" and choice.watchdog and virt in choice.reason


def test_auto_refuses_paravirtual_kvm_without_cpu_flags(fake):
    choice = choose_accel("auto", fake("rw", CPUINFO_PLAIN))
    assert choice.accel == "tcg" and not choice.watchdog
    assert "neither vmx nor svm" in choice.reason


def test_auto_without_device(fake):
    choice = choose_accel("auto", fake("missing", CPUINFO_SVM))
    assert choice.accel == "tcg" and "does not exist" in choice.reason
    choice = choose_accel("auto", fake("unopenable", CPUINFO_SVM))
    assert choice.accel == "tcg" and "cannot be opened" in choice.reason


def test_explicit_choices(fake):
    assert choose_accel("tcg", fake("rw", CPUINFO_SVM)).accel == "tcg"
    assert choose_accel("kvm", fake("rw", CPUINFO_SVM)).accel == "kvm"
    assert not choose_accel("kvm", fake("rw", CPUINFO_SVM)).watchdog
    with pytest.raises(MachineError, match="--accel kvm: KVM is not usable here: .*neither vmx nor svm"):
        choose_accel("kvm", fake("rw", CPUINFO_PLAIN))


def test_hw_virt_property():
    assert HostVirt(True, "", frozenset({"svm"})).hw_virt == "svm"
    assert HostVirt(True, "", frozenset()).hw_virt == ""
