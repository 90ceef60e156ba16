"""Which accelerator to boot with, and why.

A /dev/kvm that opens is not enough: on a paravirtual KVM (a guest of another
hypervisor) the device opens but the CPU shows neither vmx nor svm, and a
stock kernel under it hangs silently after "Booting from ROM".  So `auto`
picks KVM only when the device opens read-write AND the CPU flags show
hardware virtualisation, and even then keeps a boot watchdog that falls back
to TCG when KVM produces no console output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.errors import MachineError


@dataclass(frozen=True)
class HostVirt:
    """What the host offers, as read from the device and /proc/cpuinfo."""

    kvm_rw: bool
    kvm_detail: str      # why /dev/kvm is or is not usable
    cpu_flags: frozenset[str]

    @property
    def hw_virt(self) -> str:
        return "vmx" if "vmx" in self.cpu_flags else "svm" if "svm" in self.cpu_flags else ""


@dataclass(frozen=True)
class AccelChoice:
    accel: str           # "kvm" or "tcg"
    reason: str
    watchdog: bool       # fall back to TCG if KVM shows no console output


def read_cpu_flags(cpuinfo_text: str) -> frozenset[str]:
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def probe_host(kvm_device: Path = Path("/dev/kvm"), cpuinfo: Path = Path("/proc/cpuinfo")) -> HostVirt:
    try:
        fd = os.open(kvm_device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        rw, detail = False, f"{kvm_device} does not exist"
    except PermissionError:
        rw, detail = False, f"{kvm_device} is not readable and writable by this user"
    except OSError as e:
        rw, detail = False, f"{kvm_device} cannot be opened: {e.strerror}"
    else:
        os.close(fd)
        rw, detail = True, f"{kvm_device} opens read-write"
    try:
        flags = read_cpu_flags(cpuinfo.read_text())
    except OSError:
        flags = frozenset()
    return HostVirt(kvm_rw=rw, kvm_detail=detail, cpu_flags=flags)


def choose_accel(requested: str, host: HostVirt) -> AccelChoice:
    """The decision, pure: `requested` is auto, kvm or tcg."""
    if requested == "tcg":
        return AccelChoice("tcg", "tcg requested", watchdog=False)
    usable = host.kvm_rw and bool(host.hw_virt)
    if not host.kvm_rw:
        why_not = host.kvm_detail
    elif not host.hw_virt:
        why_not = (f"{host.kvm_detail} but the CPU shows neither vmx nor svm "
                   f"(a paravirtual KVM that cannot boot a stock kernel)")
    else:
        why_not = ""
    if requested == "kvm":
        if not usable:
            raise MachineError(f"--accel kvm: KVM is not usable here: {why_not}; use --accel tcg or auto")
        return AccelChoice("kvm", f"kvm requested; {host.kvm_detail}, CPU has {host.hw_virt}", watchdog=False)
    if usable:
        return AccelChoice("kvm", f"auto: {host.kvm_detail} and the CPU has {host.hw_virt}", watchdog=True)
    return AccelChoice("tcg", f"auto: {why_not}; using TCG", watchdog=False)
