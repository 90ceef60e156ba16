from pathlib import Path

import pytest

from harness.vm.qemu_args import QemuPlan, kernel_cmdline, qemu_argv

KEY = "ecdsa-sha2-nistp256 AAAAE2VjZHNh"


def plan(accel: str, **kw) -> QemuPlan:
    base = dict(qemu="qemu-system-x86_64", kernel=Path("/k/vmlinuz"), initrd=Path("/i/initramfs.cpio"),
                accel=accel, cpus=2, memory_mib=2048, qmp_socket=Path("/run/x/qmp.sock"), ssh_port=40022,
                ssh_pubkey=KEY)
    base.update(kw)
    return QemuPlan(**base)


def opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_tcg_uses_multithreaded_tcg_and_cpu_max_for_nested_svm():
    argv = qemu_argv(plan("tcg"))
    assert argv[0] == "qemu-system-x86_64"
    assert opt(argv, "-accel") == ["tcg,thread=single"] and opt(argv, "-cpu") == ["max"]
    assert "-enable-kvm" not in argv


def test_kvm_uses_host_cpu():
    argv = qemu_argv(plan("kvm"))
    assert opt(argv, "-accel") == ["kvm"] and opt(argv, "-cpu") == ["host"]


def test_unknown_accel_is_refused():
    with pytest.raises(ValueError):
        qemu_argv(plan("hvf"))


def test_machine_shape_and_files():
    argv = qemu_argv(plan("tcg", cpus=3, memory_mib=1536))
    assert opt(argv, "-smp") == ["3"] and opt(argv, "-m") == ["1536M"]
    assert opt(argv, "-kernel") == ["/k/vmlinuz"] and opt(argv, "-initrd") == ["/i/initramfs.cpio"]
    assert "-no-reboot" in argv and "-nodefaults" in argv


def test_network_is_restricted_and_forwarded_on_loopback_only():
    [netdev] = opt(qemu_argv(plan("tcg")), "-netdev")
    assert netdev == "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"


def test_qmp_socket_console_and_pvpanic():
    argv = qemu_argv(plan("tcg"))
    chardevs = opt(argv, "-chardev")
    assert "socket,id=qmp,path=/run/x/qmp.sock,server=on,wait=off" in chardevs
    assert "stdio,id=console,signal=off" in chardevs
    assert opt(argv, "-mon") == ["chardev=qmp,mode=control"]
    assert opt(argv, "-serial") == ["chardev:console"]
    assert "pvpanic" in opt(argv, "-device") and opt(argv, "-action") == ["panic=pause"]


def test_kernel_cmdline_carries_the_run_key_without_spaces():
    line = kernel_cmdline(plan("tcg", extra_cmdline="nokaslr"))
    words = line.split()
    assert "console=ttyS0" in words and "panic=-1" in words and words[-1] == "nokaslr"
    assert "nh.sshkey=ecdsa-sha2-nistp256:AAAAE2VjZHNh" in words
    assert opt(qemu_argv(plan("tcg")), "-append") == [kernel_cmdline(plan("tcg"))]


def test_a_comma_in_a_path_cannot_add_qemu_options():
    """$TMPDIR=/tmp/x,server=off would otherwise end the path and add an option of its own."""
    argv = qemu_argv(plan("tcg", qmp_socket=Path("/tmp/a,wait=on,server=off/qmp.sock")))
    assert "socket,id=qmp,path=/tmp/a,,wait=on,,server=off/qmp.sock,server=on,wait=off" in opt(argv, "-chardev")
