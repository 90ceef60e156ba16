"""From a kernel spec to something bootable: the kernel, its guest programs, its initramfs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.artifacts.boot_image import BootImage
from harness.artifacts.guest_build import build_guest_programs
from harness.artifacts.initramfs import Initramfs, build_initramfs, make_manifest
from harness.artifacts.kernel import Kernel, resolve_kernel
from harness.kernelspec import KernelSpec


@dataclass(frozen=True)
class Prepared:
    kernel: Kernel
    initramfs: Initramfs

    @property
    def image(self) -> BootImage:
        return BootImage(kernel=self.kernel.image, initrd=self.initramfs.path, host_key=self.initramfs.host_key)


def prepare(spec: KernelSpec, cache: Path) -> Prepared:
    kernel = resolve_kernel(spec, cache)
    programs = build_guest_programs(kernel, cache)
    manifest = make_manifest(kernel.release, kernel.modules_dir, extra_files=programs.initramfs_files())
    return Prepared(kernel=kernel, initramfs=build_initramfs(manifest, cache))
