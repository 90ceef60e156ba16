"""The guest's initramfs: busybox, dropbear, the kernel modules the guest needs, our init.

The image is content-addressed: a manifest of (guest path, source content)
is hashed, and an existing image with that hash is reused.  Each image is
one cache entry, a directory holding initramfs.cpio and the host_key.pub of
the sshd key baked into it, published together (harness.artifacts.publish).  Nothing per-run
goes in (the run's SSH key travels on the kernel command line), so one image
serves every run of one kernel until an input changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from harness.artifacts.modules import ModuleFile, ModuleIndex, read_module_bytes
from harness.artifacts.publish import publish
from harness.errors import ArtifactError

# Bump when the layout or the way files are staged changes.
BUILDER_VERSION = "5"

GUEST_DIR = Path(__file__).resolve().parent.parent.parent / "guest"

# Needed to boot at all (network for SSH); built in on some kernels.
REQUIRED_MODULES = ("virtio_pci", "virtio_net")
# Loaded at boot when present: pvpanic turns a panic into a QMP event, button
# and evdev let the ACPI power button (QMP system_powerdown) reach acpid.
BOOT_MODULES = REQUIRED_MODULES + ("pvpanic_mmio", "button", "evdev")
# Shipped, loaded by scenarios that need them: KVM, and zram swap with its
# compressors for reclaim (built in on some kernels, e.g. lzo on 6.12).
EXTRA_MODULES = ("irqbypass", "kvm", "kvm_amd", "kvm_intel", "zram", "lzo", "lzo_rle")

BUSYBOX = Path("/bin/busybox")
DROPBEAR = Path("/usr/sbin/dropbear")
DROPBEARKEY = Path("/usr/bin/dropbearkey")

# The two files of an image's cache entry.
IMAGE, HOST_KEY = "initramfs.cpio", "host_key.pub"


@dataclass(frozen=True)
class Initramfs:
    path: Path
    host_key: str          # the guest sshd's public key, "ecdsa-sha2-nistp256 AAAA..."
    digest: str
    modules: tuple[str, ...]
    built: bool            # False when taken from the cache


@dataclass
class Manifest:
    """Everything that goes in, before anything is copied."""

    release: str
    files: dict[str, Path] = field(default_factory=dict)        # guest path -> host file
    modules: dict[str, Path] = field(default_factory=dict)      # guest path -> host module (maybe compressed)
    texts: dict[str, str] = field(default_factory=dict)         # guest path -> content
    symlinks: dict[str, str] = field(default_factory=dict)      # guest path -> target
    executables: set[str] = field(default_factory=set)

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(f"notifier-harness initramfs {BUILDER_VERSION} {self.release}\n".encode())
        for kind, table in (("file", self.files), ("module", self.modules)):
            for guest, host in sorted(table.items()):
                h.update(f"{kind} {guest} {_file_digest(host)}\n".encode())
        for guest, text in sorted(self.texts.items()):
            h.update(f"text {guest} {hashlib.sha256(text.encode()).hexdigest()}\n".encode())
        for guest, target in sorted(self.symlinks.items()):
            h.update(f"link {guest} {target}\n".encode())
        h.update(" ".join(sorted(self.executables)).encode())
        return h.hexdigest()


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise ArtifactError(f"initramfs input {path} is unreadable: {e.strerror}") from None


def shared_libraries(binary: Path) -> list[Path]:
    """The shared objects (and the loader) a dynamic binary needs, from ldd."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ArtifactError(f"ldd {binary} failed: {e}") from None
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(Path(parts[2]))
        elif parts and parts[0].startswith("/"):
            libs.append(Path(parts[0]))
    return libs


def read_builtin(modules_dir: Path) -> set[str]:
    """Names of modules built into the kernel (modules.builtin), if it says."""
    f = modules_dir / "modules.builtin"
    if not f.is_file():
        return set()
    return {Path(line.strip()).name.removesuffix(".ko").replace("-", "_")
            for line in f.read_text().splitlines() if line.strip()}


def select_modules(index: ModuleIndex, builtin: set[str],
                   release: str) -> tuple[list[ModuleFile], list[str], list[str]]:
    """The module files to ship, dependencies first, and the boot lists: the network's modules (loaded before
    sshd) and the rest (after the ready marker).

    A required module that is neither a module nor built in is an error; an
    optional one is simply left out (the scenario needing it says so later).
    """
    for name in REQUIRED_MODULES:
        if name not in index and name not in builtin and builtin:
            raise ArtifactError(f"kernel {release} has no {name} module and does not build it in; "
                                f"the guest would have no network")
    wanted = [n for n in BOOT_MODULES + EXTRA_MODULES if n in index]
    mods = index.closure(wanted)
    for mod in mods:
        magic = mod.vermagic.split()[0] if mod.vermagic else ""
        if magic != release:
            raise ArtifactError(f"module {mod.path} was built for {magic or 'an unknown release'}, "
                                f"not {release}")
    boot_names = {m.name for m in index.closure([n for n in BOOT_MODULES if n in index])}
    network = {m.name for m in index.closure([n for n in REQUIRED_MODULES if n in index])}
    boot = [m.name for m in mods if m.name in boot_names]
    return mods, [n for n in boot if n in network], [n for n in boot if n not in network]


def make_manifest(release: str, modules_dir: Path,
                  extra_files: Optional[Mapping[str, Path]] = None) -> Manifest:
    """Describe the image for one kernel; `extra_files` adds guest programs later issues need."""
    for tool, package in ((BUSYBOX, "busybox-static"), (DROPBEAR, "dropbear-bin")):
        if not tool.exists():
            raise ArtifactError(f"{tool} is missing; install the Debian package {package} (make setup)")
    man = Manifest(release=release)
    man.files["bin/busybox"] = BUSYBOX
    man.files["bin/dropbear"] = DROPBEAR
    man.executables.update({"bin/busybox", "bin/dropbear"})
    for lib in shared_libraries(DROPBEAR):
        man.files[str(lib).lstrip("/")] = lib.resolve()
    # Of busybox's applets the image links only /bin/sh (the kernel runs rcS through its #!);
    # init links the rest with one `busybox --install -s`.  Measured under TCG on 6.12: unpacking
    # some 270 symlinks cost 0.13-0.2 s before init, `busybox --install -s` 0.01-0.03 s; and a
    # /sbin/modprobe present while the kernel boots made each of its early request_module() calls
    # (for modules this image does not have) start a process, 0.15 s in all, before /init ran.
    man.symlinks.update({"bin/sh": "busybox", "init": "bin/busybox", "sbin": "bin", "usr/bin": "../bin", "usr/sbin": "../bin"})

    init = GUEST_DIR / "init"
    man.files["etc/inittab"] = init / "inittab"
    man.files["etc/fstab"] = init / "fstab"
    man.files["etc/init.d/rcS"] = init / "rcS"
    man.files["etc/acpi/PWRF/00000080"] = init / "acpi" / "PWRF" / "00000080"
    man.executables.update({"etc/init.d/rcS", "etc/acpi/PWRF/00000080"})
    man.texts["etc/passwd"] = "root:x:0:0:root:/root:/bin/sh\n"
    man.texts["etc/group"] = "root:x:0:\ntty:x:5:\n"
    man.texts["etc/shells"] = "/bin/sh\n"
    man.texts["etc/profile"] = "export PATH=/bin PS1='[nh \\w]# '\n"

    index = ModuleIndex.scan(modules_dir)
    mods, network, after_ready = select_modules(index, read_builtin(modules_dir), release)
    moddir = f"lib/modules/{release}"
    dep_lines = []
    for mod in mods:
        rel = f"kernel/{mod.name}.ko"
        man.modules[f"{moddir}/{rel}"] = mod.path
        deps = " ".join(f"kernel/{d}.ko" for d in _all_deps(mod, index))
        dep_lines.append(f"{rel}:{' ' + deps if deps else ''}")
    man.texts[f"{moddir}/modules.dep"] = "\n".join(dep_lines) + "\n"
    # The network's modules before sshd, the rest (pvpanic, the power button) after the ready
    # marker: SSH is what the harness waits for.
    # One line each: init reads them with the shell's `read`, without starting a process.
    man.texts["etc/nh/network-modules"] = " ".join(network) + "\n"
    man.texts["etc/nh/boot-modules"] = " ".join(after_ready) + "\n"
    for guest, host in (extra_files or {}).items():
        man.files[guest] = host
        man.executables.add(guest)
    return man


def _all_deps(mod: ModuleFile, index: ModuleIndex) -> list[str]:
    """modules.dep lists the whole closure, nearest first, as depmod does."""
    return [m.name for m in reversed(index.closure([mod.name])) if m.name != mod.name]


def build_initramfs(manifest: Manifest, cache: Path) -> Initramfs:
    """One cache entry per digest: the image and its host key, published together."""
    digest = manifest.digest()
    entry = cache / "initramfs" / f"{manifest.release}-{digest[:16]}"
    mod_names = tuple(sorted(Path(p).stem for p in manifest.modules))
    built = publish(entry, lambda tmp: _build_image(manifest, tmp))
    try:
        host_key = (entry / HOST_KEY).read_text().strip()
    except OSError as e:
        raise ArtifactError(f"cache entry {entry} is damaged ({HOST_KEY}: {e.strerror}); remove it") from None
    return Initramfs(path=entry / IMAGE, host_key=host_key, digest=digest, modules=mod_names, built=built)


def _build_image(manifest: Manifest, out: Path) -> None:
    for tool, package in ((shutil.which("cpio"), "cpio"), (DROPBEARKEY.exists(), "dropbear-bin")):
        if not tool:
            raise ArtifactError(f"building the initramfs needs the Debian package {package} (make setup)")
    stage = out / "root"
    for d in ("dev", "proc", "sys", "tmp", "run", "root/.ssh", "var/log", "etc/dropbear", "lib64"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    for d in ("root", "root/.ssh"):
        (stage / d).chmod(0o700)   # sshd refuses keys under a directory others can write
    for guest, host in manifest.files.items():
        dst = stage / guest
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(host, dst)  # keeps the mode: the loader must stay executable
    for guest, host in manifest.modules.items():
        dst = stage / guest
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(read_module_bytes(host))
    for guest, text in manifest.texts.items():
        dst = stage / guest
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(text)
    for guest, target in manifest.symlinks.items():
        dst = stage / guest
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(target)
    for guest in manifest.executables:
        (stage / guest).chmod(0o755)
    pub = _make_host_key(stage / "etc" / "dropbear" / "host_key")
    _pack(stage, out / IMAGE)
    (out / HOST_KEY).write_text(pub + "\n")
    shutil.rmtree(stage)


def _make_host_key(path: Path) -> str:
    """A fresh host key per image; the harness pins its public half for SSH."""
    subprocess.run([str(DROPBEARKEY), "-t", "ecdsa", "-s", "256", "-f", str(path)],
                   check=True, capture_output=True)
    out = subprocess.run([str(DROPBEARKEY), "-y", "-f", str(path)], check=True,
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("ecdsa-"):
            return " ".join(line.split()[:2])
    raise ArtifactError(f"dropbearkey -y printed no public key: {out!r}")


def _pack(stage: Path, out: Path) -> None:
    """newc cpio, owned by root, entries sorted so the bytes are reproducible."""
    entries: list[str] = []
    for dirpath, dirnames, filenames in os.walk(stage):
        dirnames.sort()
        rel = Path(dirpath).relative_to(stage)
        if str(rel) != ".":
            entries.append(str(rel))
        entries.extend(str(rel / f) if str(rel) != "." else f for f in sorted(filenames))
        # os.walk lists symlinks to directories among dirnames without descending
        entries.extend(str(rel / d) if str(rel) != "." else d
                       for d in dirnames if (Path(dirpath) / d).is_symlink())
    with open(out, "wb") as f:
        proc = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"],
                              cwd=stage, input="\n".join(entries).encode(), stdout=f,
                              stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise ArtifactError(f"cpio failed: {proc.stderr.decode(errors='replace').strip()}")


FLOOR_INIT = ("#!/bin/busybox sh\n"
              "# The floor: nothing but power off, to time the kernel's own boot.\n"
              "/bin/busybox poweroff -f\n")


def build_floor_initramfs(cache: Path) -> Path:
    """A trivial initramfs whose init powers off at once: the raw QEMU boot floor."""
    digest = hashlib.sha256(f"floor {BUILDER_VERSION} {_file_digest(BUSYBOX)} {FLOOR_INIT}".encode()).hexdigest()
    entry = cache / "initramfs" / f"floor-{digest[:16]}"

    def build(out: Path) -> None:
        stage = out / "root"
        (stage / "bin").mkdir(parents=True)
        shutil.copy(BUSYBOX, stage / "bin" / "busybox")
        (stage / "init").write_text(FLOOR_INIT)
        (stage / "init").chmod(0o755)
        _pack(stage, out / "floor.cpio")
        shutil.rmtree(stage)

    publish(entry, build)
    return entry / "floor.cpio"
