"""Resolve a kernel spec to the files a run needs and the release it must report."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness.artifacts import debian
from harness.errors import ArtifactError
from harness.kernelspec import KernelSpec


_RELEASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*")


@dataclass(frozen=True)
class Kernel:
    """A kernel under test, ready to boot."""

    spec: KernelSpec
    release: str                  # what `uname -r` in the guest must say
    image: Path
    modules_dir: Path             # searched for .ko files
    build_dir: Optional[Path]     # `make -C build_dir M=...` builds a module for it
    config: Optional[Path] = None # its .config, when known: a change rebuilds the probe module

    @property
    def version(self) -> tuple[int, int]:
        """(major, minor): the key of the model's feature table."""
        m = re.match(r"(\d+)\.(\d+)", self.release)
        assert m, self.release
        return int(m.group(1)), int(m.group(2))

    @property
    def label(self) -> str:
        """Short name for reports: the release."""
        return self.release


def read_image_release(path: Path) -> str:
    """The release string an x86 bzImage carries in its setup header.

    boot protocol >= 2.00: "HdrS" at 0x202, and a pointer (minus 0x200) to a
    NUL-terminated version string at 0x20E, e.g.
    "6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP ...".
    """
    try:
        with open(path, "rb") as f:
            head = f.read(0x10000)
    except OSError as e:
        raise ArtifactError(f"cannot read kernel image {path}: {e.strerror}") from None
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise ArtifactError(f"{path} is not an x86 bzImage (no HdrS setup header"
                            f"{'; the file is empty' if not head else ''})")
    offset, = struct.unpack_from("<H", head, 0x20E)
    start = offset + 0x200
    if offset == 0 or start >= len(head):
        raise ArtifactError(f"{path} carries no kernel version string")
    end = head.find(b"\0", start)
    words = head[start:end].decode(errors="replace").split() if end >= 0 else []
    if not words:
        raise ArtifactError(f"{path}: the kernel version string at offset {start:#x} is "
                            f"{'empty' if end >= 0 else 'not NUL-terminated'}; not a usable bzImage")
    # The release names cache entries and run directories: no path separators or oddities.
    if not _RELEASE.fullmatch(words[0]):
        raise ArtifactError(f"{path}: kernel release {words[0]!r} is not a letter or digit "
                            f"followed by letters, digits and . _ + ~ -")
    return words[0]


def _check_release(what: str, expected: str, found: str) -> None:
    if expected != found:
        raise ArtifactError(f"{what} says release {found!r} but the kernel image is {expected!r}")


def resolve_kernel(spec: KernelSpec, cache: Path) -> Kernel:
    if spec.kind == "debian":
        release = debian.resolve_release(spec, cache)
        deb = debian.fetch(release, cache)
        _check_release(f"{deb.image}", release, read_image_release(deb.image))
        config = deb.headers_dir / ".config"
        return Kernel(spec=spec, release=release, image=deb.image, modules_dir=deb.modules_dir,
                      build_dir=deb.headers_dir,
                      config=config if config.is_file() else deb.root / "boot" / f"config-{release}")
    try:
        return _local_kernel(spec)
    except OSError as e:  # e.g. a name too long, or a directory we may not enter
        raise ArtifactError(f"{spec.text}: {e.filename or spec.path}: {e.strerror}") from None


def _local_kernel(spec: KernelSpec) -> Kernel:
    if spec.kind == "tree":
        tree = spec.path
        assert tree is not None
        if not tree.is_dir():
            raise ArtifactError(f"{spec.text}: kernel tree {tree} does not exist")
        image = tree / "arch" / "x86" / "boot" / "bzImage"
        if not image.is_file():
            raise ArtifactError(f"{spec.text}: {image} does not exist; build the kernel first (make bzImage modules)")
        release = read_image_release(image)
        release_file = tree / "include" / "config" / "kernel.release"
        if release_file.is_file():
            _check_release(str(release_file), release, release_file.read_text(errors="replace").strip())
        return Kernel(spec=spec, release=release, image=image, modules_dir=tree, build_dir=tree,
                      config=tree / ".config")
    # image
    assert spec.path is not None and spec.modules is not None
    if not spec.path.is_file():
        raise ArtifactError(f"{spec.text}: kernel image {spec.path} does not exist")
    if not spec.modules.is_dir():
        raise ArtifactError(f"{spec.text}: modules directory {spec.modules} does not exist")
    release = read_image_release(spec.path)
    build = spec.modules / "build"
    has_build = (build / "Makefile").exists()
    config = next((c for c in (build / ".config", spec.modules / "config") if c.is_file()), None)
    return Kernel(spec=spec, release=release, image=spec.path, modules_dir=spec.modules,
                  build_dir=build if has_build else None, config=config)
