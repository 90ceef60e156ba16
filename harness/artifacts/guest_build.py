"""Build what runs inside the guest: the probe module (Kbuild, per kernel) and
the static workloads (gcc, once).  Both are cached by a hash of their sources;
a build failure carries the compiler's own last lines."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.artifacts.kernel import Kernel
from harness.artifacts.modules import parse_modinfo, read_module_bytes
from harness.errors import ArtifactError

GUEST = Path(__file__).resolve().parent.parent.parent / "guest"
WORKLOADS = ("nhctl", "mmops", "minivmm")
# Where the guest finds them.
GUEST_BIN = "/opt/nh/bin"
GUEST_PROBE = "/opt/nh/nh_probe.ko"
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


def build_workloads(cache: Path) -> dict[str, Path]:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ArtifactError("gcc is not installed; the guest workloads are built with it (make setup)")
    version = subprocess.run([gcc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    out = cache / "workloads" / _digest(GUEST / "workloads", GUEST / "include", extra=version)[:16]
    paths = {name: out / name for name in WORKLOADS}
    if all(p.is_file() for p in paths.values()):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        tmp = path.with_name(f".{name}.tmp")
        proc = subprocess.run([gcc, "-static", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{GUEST / 'include'}",
                               "-o", str(tmp), str(GUEST / "workloads" / f"{name}.c")],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ArtifactError(f"building guest workload {name} failed:\n{_tail(proc.stderr)}")
        tmp.replace(path)
    return paths


def build_probe_module(kernel: Kernel, cache: Path) -> Path:
    """nh_probe.ko for this kernel, built against its headers or tree."""
    if kernel.build_dir is None or not (kernel.build_dir / "Makefile").exists():
        raise ArtifactError(f"kernel {kernel.release} has no build directory to build the probe module "
                            f"against (a Debian kernel brings its headers; an image needs modules=DIR with DIR/build)")
    symvers = kernel.build_dir / "Module.symvers"
    key = _digest(GUEST / "module", GUEST / "include",
                  extra=f"{kernel.release} {kernel.build_dir.resolve()} "
                        f"{hashlib.sha256(symvers.read_bytes()).hexdigest() if symvers.exists() else ''}")
    out = cache / "modules" / f"{kernel.release}-{key[:16]}" / "nh_probe.ko"
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="nh-probe-build-") as tmp:
        # Kbuild finds the header at $(src)/../include, as in the source tree.
        shutil.copytree(GUEST / "module", Path(tmp) / "module")
        shutil.copytree(GUEST / "include", Path(tmp) / "include")
        proc = subprocess.run(["make", "-C", str(kernel.build_dir), f"M={tmp}/module", "modules"],
                              capture_output=True, text=True)
        built = Path(tmp) / "module" / "nh_probe.ko"
        if proc.returncode != 0 or not built.is_file():
            raise ArtifactError(f"building the probe module for {kernel.release} failed:\n"
                                f"{_tail(proc.stdout + proc.stderr)}")
        magic = parse_modinfo(read_module_bytes(built)).get("vermagic", [""])[0].split()
        if not magic or magic[0] != kernel.release:
            raise ArtifactError(f"the probe module was built for {magic[:1]}, not {kernel.release}")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, out)
    return out


def build_guest_programs(kernel: Kernel, cache: Path) -> GuestPrograms:
    return GuestPrograms(probe_module=build_probe_module(kernel, cache), workloads=build_workloads(cache))
