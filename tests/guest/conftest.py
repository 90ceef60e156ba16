"""Guest tests boot real kernels under QEMU.  Kernels and initramfs images are
resolved once per session (downloaded into the cache the first time)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.artifacts.cache import cache_root
from harness.artifacts.initramfs import Initramfs, build_initramfs, make_manifest
from harness.artifacts.kernel import Kernel, resolve_kernel
from harness.config import MachineConfig
from harness.kernelspec import parse_kernel_spec
from harness.vm.accel import AccelChoice
from harness.vm.machine import BootImage

SERIES = ("6.1", "6.12")
TCG = AccelChoice("tcg", "guest tests run under TCG", watchdog=False)


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/guest/" in str(item.fspath):
            item.add_marker(pytest.mark.guest)


@dataclass(frozen=True)
class Booted:
    kernel: Kernel
    initramfs: Initramfs

    @property
    def image(self) -> BootImage:
        return BootImage(kernel=self.kernel.image, initrd=self.initramfs.path, host_key=self.initramfs.host_key)


@pytest.fixture(scope="session")
def kernels() -> dict[str, Booted]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed; `make test` installs it (qemu-system-x86)")
    cache = cache_root()
    out = {}
    for series in SERIES:
        kernel = resolve_kernel(parse_kernel_spec(f"debian:{series}"), cache)
        out[series] = Booted(kernel, build_initramfs(make_manifest(kernel.release, kernel.modules_dir), cache))
    return out


@pytest.fixture
def machine_config() -> MachineConfig:
    return MachineConfig(cpus=2, memory_mib=1024, accel="tcg", boot_timeout_s=120)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes, but reaped is what we want.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline_of(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def qemu_running(argv: list[str]) -> list[int]:
    """Pids of live processes whose command line is exactly this QEMU argv."""
    return [pid for pid in pids() if cmdline_of(pid) == argv and pid_alive(pid)]
