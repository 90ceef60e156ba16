"""Build what runs inside the guest: the probe module (Kbuild, per kernel) and
the static workloads (gcc, once).  Both are cache entries (harness.artifacts.publish)
keyed by a hash of their sources, and the module's also by the kernel's .config
and Module.symvers; a build failure carries the compiler's own last lines."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.artifacts.kernel import Kernel
from harness.artifacts.modules import parse_modinfo, read_module_bytes
from harness.artifacts.publish import publish
from harness.errors import ArtifactError

GUEST = Path(__file__).resolve().parent.parent.parent / "guest"
WORKLOADS = ("nhctl", "mmops", "minivmm")
# Where the guest finds them.
GUEST_BIN = "/opt/nh/bin"
GUEST_PROBE = "/opt/nh/nh_probe.ko"
PROBE = "nh_probe.ko"
NHCTL, MMOPS, MINIVMM = (f"{GUEST_BIN}/{w}" for w in WORKLOADS)


@dataclass(frozen=True)
class GuestPrograms:
    probe_module: Path
    workloads: dict[str, Path]

    def initramfs_files(self) -> dict[str, Path]:
        files = {f"{GUEST_BIN.lstrip('/')}/{name}": path for name, path in self.workloads.items()}
        files[GUEST_PROBE.lstrip("/")] = self.probe_module
        return files


def _digest(*paths: Path, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            h.update(f"{f.relative_to(root.parent)}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def workload_sources(name: str) -> list[Path]:
    """NAME.c, and NAME-*.c: the operation families mmops links in (guest/workloads/mmops.h)."""
    workloads = GUEST / "workloads"
    return [workloads / f"{name}.c", *sorted(workloads.glob(f"{name}-*.c"))]


def build_workloads(cache: Path) -> dict[str, Path]:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ArtifactError("gcc is not installed; the guest workloads are built with it (make setup)")
    version = subprocess.run([gcc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    entry = cache / "workloads" / _digest(GUEST / "workloads", GUEST / "include", extra=version)[:16]

    def build(out: Path) -> None:
        for name in WORKLOADS:
            proc = subprocess.run([gcc, "-static", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{GUEST / 'include'}",
                                   "-o", str(out / name), *map(str, workload_sources(name))],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise ArtifactError(f"building guest workload {name} failed:\n{_tail(proc.stderr)}")

    publish(entry, build)
    return {name: entry / name for name in WORKLOADS}


def _config_digest(kernel: Kernel) -> str:
    """What the module's build depends on besides its sources: the kernel's .config
    (a change without MODVERSIONS leaves Module.symvers as it was) and its symbols."""
    assert kernel.build_dir is not None
    h = hashlib.sha256()
    for f in (kernel.config or kernel.build_dir / ".config", kernel.build_dir / "Module.symvers"):
        try:
            h.update(f"{f.name} {hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
        except FileNotFoundError:
            h.update(f"{f.name} none\n".encode())
        except OSError as e:
            raise ArtifactError(f"cannot read {f} of kernel {kernel.release}: {e.strerror}") from None
    return h.hexdigest()


def build_probe_module(kernel: Kernel, cache: Path) -> Path:
    """nh_probe.ko for this kernel, built against its headers or tree."""
    if kernel.build_dir is None or not (kernel.build_dir / "Makefile").exists():
        raise ArtifactError(f"kernel {kernel.release} has no build directory to build the probe module "
                            f"against (a Debian kernel brings its headers; an image needs modules=DIR with DIR/build)")
    build_dir = kernel.build_dir
    key = _digest(GUEST / "module", GUEST / "include",
                  extra=f"{kernel.release} {build_dir.resolve()} {_config_digest(kernel)}")
    entry = cache / "modules" / f"{kernel.release}-{key[:16]}"

    def build(out: Path) -> None:
        src = out / "src"
        # Kbuild finds the header at $(src)/../include, as in the source tree.
        shutil.copytree(GUEST / "module", src / "module")
        shutil.copytree(GUEST / "include", src / "include")
        proc = subprocess.run(["make", "-C", str(build_dir), f"M={src}/module", "modules"],
                              capture_output=True, text=True)
        built = src / "module" / PROBE
        if proc.returncode != 0 or not built.is_file():
            raise ArtifactError(f"building the probe module for {kernel.release} failed:\n"
                                f"{_tail(proc.stdout + proc.stderr)}")
        try:
            magic = parse_modinfo(read_module_bytes(built)).get("vermagic", [""])[0].split()
        except ValueError as e:
            raise ArtifactError(f"the probe module built for {kernel.release} is unreadable: {e}") from None
        if not magic or magic[0] != kernel.release:
            raise ArtifactError(f"the probe module was built for {magic[:1]}, not {kernel.release}")
        built.rename(out / PROBE)
        shutil.rmtree(src)

    publish(entry, build)
    return entry / PROBE


def build_guest_programs(kernel: Kernel, cache: Path) -> GuestPrograms:
    return GuestPrograms(probe_module=build_probe_module(kernel, cache), workloads=build_workloads(cache))
