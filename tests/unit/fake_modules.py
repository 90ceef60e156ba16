"""Real ELF objects with a .modinfo section, compiled by gcc: stand-ins for .ko files."""

from __future__ import annotations

import lzma
import subprocess
from pathlib import Path


def make_module(path: Path, depends: str = "", vermagic: str = "6.1.0-test SMP mod_unload", xz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    src = path.with_name(path.name.split(".")[0] + ".c")
    info = f"depends={depends}\\0vermagic={vermagic}\\0license=GPL"
    src.write_text(f'__attribute__((section(".modinfo"), used)) static const char modinfo[] = "{info}";\n'
                   f"int placeholder;\n")
    obj = path.with_name(path.name.split(".")[0] + ".o")
    subprocess.run(["gcc", "-c", "-o", str(obj), str(src)], check=True)
    src.unlink()
    data = obj.read_bytes()
    obj.unlink()
    path.write_bytes(lzma.compress(data) if xz else data)
    return path


def make_module_tree(root: Path, release: str = "6.1.0-test", xz: bool = False) -> Path:
    """A lib/modules/<release> directory shaped like Debian's 6.1 cloud kernel."""
    ext = ".ko.xz" if xz else ".ko"
    magic = f"{release} SMP mod_unload"
    table = {
        "drivers/virtio/virtio_ring": "", "drivers/virtio/virtio": "virtio_ring",
        "drivers/virtio/virtio_pci": "virtio,virtio_ring", "net/core/failover": "",
        "drivers/net/net_failover": "failover", "drivers/net/virtio_net": "net_failover,virtio,virtio_ring",
        "virt/lib/irqbypass": "", "arch/x86/kvm/kvm": "irqbypass", "arch/x86/kvm/kvm-amd": "kvm,irqbypass",
    }
    for rel, deps in table.items():
        make_module(root / "kernel" / f"{rel}{ext}", depends=deps, vermagic=magic, xz=xz)
    (root / "modules.builtin").write_text("kernel/drivers/input/evdev.ko\n")
    return root
