"""Kernel modules on the host: find them, read their .modinfo, order their dependencies.

Debian's image packages ship no modules.dep (depmod makes it at install time)
and a build tree has none until `modules_install`, so dependencies are read
from each module's own `.modinfo` ELF section.  Modules compressed as .ko.xz
(6.12) or .ko.gz are decompressed here, so the guest only ever sees plain .ko.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from harness.errors import ArtifactError

_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def module_name(path: Path) -> str:
    """kvm-amd.ko.xz -> kvm_amd: the kernel treats - and _ alike in module names."""
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def read_module_bytes(path: Path) -> bytes:
    """The uncompressed ELF object of a module file."""
    name = path.name
    try:
        if name.endswith(".ko.xz"):
            return lzma.decompress(path.read_bytes())
        if name.endswith(".ko.gz"):
            return gzip.decompress(path.read_bytes())
        if name.endswith(".ko.zst"):
            if not shutil.which("zstd"):
                raise ArtifactError(f"{path} is zstd-compressed and the zstd program is missing "
                                    f"(apt-get install zstd)")
            return subprocess.run(["zstd", "-dc", str(path)], check=True,
                                  capture_output=True).stdout
        return path.read_bytes()
    except (OSError, lzma.LZMAError, EOFError, subprocess.CalledProcessError) as e:
        raise ArtifactError(f"cannot read kernel module {path}: {e}") from None


def parse_modinfo(elf: bytes) -> dict[str, list[str]]:
    """Key/value pairs of an ELF64 module's .modinfo section (keys may repeat).

    A file that is not such an object, or is cut short, raises ValueError
    saying which, never an IndexError or struct.error.
    """
    if elf[:4] != b"\x7fELF" or elf[4:6] != b"\x02\x01":
        raise ValueError("not a little-endian ELF64 object")
    try:
        shoff, = struct.unpack_from("<Q", elf, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

        def section(i: int) -> tuple[int, int, int]:
            name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
            if offset + size > len(elf) and _type != 8:  # SHT_NOBITS has no bytes in the file
                raise ValueError(f"truncated: section {i} ends at byte {offset + size}, "
                                 f"the file has {len(elf)}")
            return name, offset, size

        _, stroff, strsize = section(shstrndx)
        for i in range(shnum):
            name_off, offset, size = section(i)
            end = elf.find(b"\0", stroff + name_off, stroff + strsize)
            if end >= 0 and elf[stroff + name_off:end] == b".modinfo":
                info: dict[str, list[str]] = {}
                for entry in elf[offset:offset + size].split(b"\0"):
                    key, eq, value = entry.decode(errors="replace").partition("=")
                    if eq:
                        info.setdefault(key, []).append(value)
                return info
    except struct.error:
        raise ValueError(f"truncated: its section headers lie past its {len(elf)} bytes") from None
    raise ValueError("no .modinfo section")


@dataclass(frozen=True)
class ModuleFile:
    name: str
    path: Path
    depends: tuple[str, ...]
    vermagic: str


class ModuleIndex:
    """Every module under one directory, by name."""

    def __init__(self, root: Path, paths: dict[str, Path]):
        self.root = root
        self._paths = paths
        self._info: dict[str, ModuleFile] = {}

    @classmethod
    def scan(cls, root: Path) -> "ModuleIndex":
        if not root.is_dir():
            raise ArtifactError(f"modules directory {root} does not exist")
        paths: dict[str, Path] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            # A build tree holds tools/ and samples with stray .ko files of no use here.
            dirnames[:] = [d for d in dirnames if d not in (".git", "tools", "build", "source")]
            for f in filenames:
                if f.endswith(_SUFFIXES):
                    p = Path(dirpath) / f
                    paths.setdefault(module_name(p), p)
        return cls(root, paths)

    def __contains__(self, name: str) -> bool:
        return name.replace("-", "_") in self._paths

    def get(self, name: str) -> ModuleFile:
        name = name.replace("-", "_")
        if name not in self._info:
            path = self._paths.get(name)
            if path is None:
                raise ArtifactError(f"kernel module {name} is not in {self.root}")
            try:
                info = parse_modinfo(read_module_bytes(path))
            except ValueError as e:
                raise ArtifactError(f"kernel module {path} is unreadable: {e}") from None
            deps = tuple(d.replace("-", "_") for d in ",".join(info.get("depends", [""])).split(",") if d)
            self._info[name] = ModuleFile(name=name, path=path, depends=deps,
                                          vermagic=(info.get("vermagic") or [""])[0])
        return self._info[name]

    def closure(self, names: Iterable[str]) -> list[ModuleFile]:
        """The named modules and everything they depend on, dependencies first.

        Names that this kernel builds in (or lacks) are skipped by the caller
        through `in`; a dependency that is missing is an error, since the named
        module would then fail to load in the guest.
        """
        ordered: list[ModuleFile] = []
        seen: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in seen:
                return
            if name in chain:
                raise ArtifactError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
            mod = self.get(name)
            for dep in mod.depends:
                visit(dep, chain + (name,))
            seen.add(name)
            ordered.append(mod)

        for n in names:
            visit(n.replace("-", "_"), ())
        return ordered
