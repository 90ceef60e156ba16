"""The initramfs inputs hash, module selection and the image release reader."""

import os
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from harness.artifacts import initramfs as ir
from harness.artifacts import publish as pub
from harness.artifacts.kernel import read_image_release
from harness.artifacts.modules import ModuleIndex
from harness.errors import ArtifactError
from tests.unit.fake_modules import make_module, make_module_tree

REL = "6.1.0-test"

needs_host_tools = pytest.mark.skipif(not (ir.BUSYBOX.exists() and ir.DROPBEAR.exists()),
                                      reason="busybox-static and dropbear-bin are not installed (make setup)")


@needs_host_tools
def test_digest_is_stable_and_follows_every_input(tmp_path):
    mods = make_module_tree(tmp_path / "mods", REL)
    first = ir.make_manifest(REL, mods).digest()
    assert ir.make_manifest(REL, mods).digest() == first
    # a module's content
    make_module(mods / "kernel" / "virt/lib/irqbypass.ko", vermagic=f"{REL} SMP", depends="")
    changed = ir.make_manifest(REL, mods).digest()
    assert changed != first
    # an extra guest file
    extra = tmp_path / "tool"
    extra.write_text("#!/bin/sh\n")
    with_extra = ir.make_manifest(REL, mods, extra_files={"opt/nh/tool": extra}).digest()
    assert with_extra != changed
    extra.write_text("#!/bin/sh\necho changed\n")
    assert ir.make_manifest(REL, mods, extra_files={"opt/nh/tool": extra}).digest() != with_extra


@needs_host_tools
def test_manifest_layout(tmp_path):
    man = ir.make_manifest(REL, make_module_tree(tmp_path / "mods", REL, xz=True))
    assert man.symlinks["init"] == "bin/busybox"
    assert man.files["etc/init.d/rcS"].name == "rcS"
    assert man.files["etc/fstab"].name == "fstab"
    # Only /bin/sh is linked in the image (the kernel runs rcS through it); no /sbin/modprobe for
    # the kernel's early request_module() calls to start; init links the other applets itself.
    assert sorted(k for k in man.symlinks if k.startswith("bin/")) == ["bin/sh"]
    rcs = man.files["etc/init.d/rcS"].read_text()
    assert rcs.index("/bin/busybox --install -s /bin") < rcs.index("modprobe")
    # The network's modules are loaded before sshd; the rest (none in this tree) after the ready marker.
    assert man.texts["etc/nh/network-modules"].split() == [
        "virtio_ring", "virtio", "virtio_pci", "failover", "net_failover", "virtio_net"]
    assert man.texts["etc/nh/boot-modules"].split() == []
    dep = man.texts[f"lib/modules/{REL}/modules.dep"]
    assert "kernel/kvm_amd.ko: kernel/kvm.ko kernel/irqbypass.ko" in dep.splitlines()
    assert f"lib/modules/{REL}/kernel/kvm_amd.ko" in man.modules


def test_module_for_another_release_is_refused(tmp_path):
    mods = make_module_tree(tmp_path / "mods", "6.1.0-other")
    index = ModuleIndex.scan(mods)
    with pytest.raises(ArtifactError, match="was built for 6.1.0-other, not 6.1.0-test"):
        ir.select_modules(index, ir.read_builtin(mods), REL)


def test_kernel_without_network_driver_is_refused(tmp_path):
    make_module(tmp_path / "mods" / "kernel" / "x.ko", vermagic=f"{REL} SMP")
    (tmp_path / "mods" / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    index = ModuleIndex.scan(tmp_path / "mods")
    with pytest.raises(ArtifactError, match="no virtio_net module"):
        ir.select_modules(index, ir.read_builtin(tmp_path / "mods"), REL)


def bzimage(version: bytes) -> bytes:
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x300)
    image[0x500:0x500 + len(version) + 1] = version + b"\0"
    return bytes(image)


def test_image_release(tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(bzimage(b"6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP"))
    assert read_image_release(path) == "6.1.0-56-cloud-amd64"


def test_image_that_is_not_a_bzimage(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(b"\x7fELF" + bytes(0x400))
    with pytest.raises(ArtifactError, match="not an x86 bzImage"):
        read_image_release(path)
    with pytest.raises(ArtifactError, match="cannot read kernel image"):
        read_image_release(tmp_path / "missing")


@pytest.mark.parametrize("data, message", [
    (b"", r"not an x86 bzImage \(no HdrS setup header; the file is empty\)"),
    (bzimage(b"")[:0x208], r"not an x86 bzImage \(no HdrS setup header\)"),
    (bzimage(b"6.1.0-x")[:0x100], r"not an x86 bzImage \(no HdrS setup header\)"),
    (bzimage(b""), r"kernel version string at offset 0x500 is empty"),
    (bzimage(b"   "), r"kernel version string at offset 0x500 is empty"),
    (bzimage(b"6.1.0-56 ")[:0x505], r"kernel version string at offset 0x500 is not NUL-terminated"),
    (bzimage(b"")[:0x500] + b"y" * 0x100, r"kernel version string at offset 0x500 is not NUL-terminated"),
    (bzimage(b"../../etc (gcc)"), r"kernel release '\.\./\.\./etc' is not a letter or digit"),
])
def test_image_release_of_bad_images_is_one_line(tmp_path, data, message):
    path = tmp_path / "bzImage"
    path.write_bytes(data)
    with pytest.raises(ArtifactError, match=message) as err:
        read_image_release(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_directory_for_an_image(tmp_path):
    with pytest.raises(ArtifactError, match=r"^cannot read kernel image .*: Is a directory$"):
        read_image_release(tmp_path)


def host_key_inside(image: Path, tmp: Path) -> str:
    """The public half of the host key packed into an image, as the guest's sshd will serve it."""
    out = tmp / "x"
    out.mkdir()
    subprocess.run(["cpio", "--quiet", "-id", "etc/dropbear/host_key"], cwd=out, stdin=image.open("rb"),
                   check=True)
    shown = subprocess.run([str(ir.DROPBEARKEY), "-y", "-f", str(out / "etc/dropbear/host_key")],
                           capture_output=True, text=True, check=True).stdout
    return next(" ".join(l.split()[:2]) for l in shown.splitlines() if l.startswith("ecdsa-"))


@needs_host_tools
def test_image_and_host_key_are_one_entry(tmp_path):
    man = ir.make_manifest(REL, make_module_tree(tmp_path / "mods", REL))
    cache = tmp_path / "cache"
    built = ir.build_initramfs(man, cache)
    assert built.built and built.path.parent.parent == cache / "initramfs"
    assert sorted(p.name for p in built.path.parent.iterdir()) == [".complete", "host_key.pub", "initramfs.cpio"]
    assert host_key_inside(built.path, tmp_path) == built.host_key
    again = ir.build_initramfs(man, cache)
    assert not again.built and (again.path, again.host_key) == (built.path, built.host_key)
    assert sorted(p.name for p in (cache / "initramfs").iterdir()) == [
        f".{built.path.parent.name}.lock", built.path.parent.name]


@needs_host_tools
@pytest.mark.parametrize("step", ["built", "marked"])
def test_killed_between_image_and_key_the_next_run_rebuilds_both(tmp_path, step):
    man = ir.make_manifest(REL, make_module_tree(tmp_path / "mods", REL))
    cache = tmp_path / "cache"
    pid = os.fork()
    if pid == 0:
        pub.on_step = lambda at, path: os.kill(os.getpid(), signal.SIGKILL) if at == step else None
        try:
            ir.build_initramfs(man, cache)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    rebuilt = ir.build_initramfs(man, cache)
    assert rebuilt.built and host_key_inside(rebuilt.path, tmp_path) == rebuilt.host_key
    assert sorted(p.name for p in (cache / "initramfs").iterdir()) == [
        f".{rebuilt.path.parent.name}.lock", rebuilt.path.parent.name]


@needs_host_tools
def test_floor_image_is_an_entry(tmp_path):
    path = ir.build_floor_initramfs(tmp_path)
    assert path.name == "floor.cpio" and (path.parent / ".complete").is_file()
    assert ir.build_floor_initramfs(tmp_path) == path
