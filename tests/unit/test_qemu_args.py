from pathlib import Path

import pytest

from harness.vm.qemu_args import QemuPlan, kernel_cmdline, node_layout, qemu_argv

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
    assert opt(argv, "-smp") == ["3,sockets=3,cores=1,threads=1"] and opt(argv, "-m") == ["1536M"]
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


def test_two_numa_nodes_by_default_each_with_its_memory_and_cpus():
    argv = qemu_argv(plan("tcg", cpus=2, memory_mib=2048))
    assert opt(argv, "-object") == ["memory-backend-ram,id=nh-mem0,size=1024M",
                                    "memory-backend-ram,id=nh-mem1,size=1024M"]
    assert opt(argv, "-numa") == ["node,nodeid=0,memdev=nh-mem0,cpus=0-0", "node,nodeid=1,memdev=nh-mem1,cpus=1-1"]
    # the backends add up to -m, which QEMU requires
    assert opt(argv, "-m") == ["2048M"]


def test_numa_balancing_is_off_when_there_are_two_nodes():
    """Automatic NUMA balancing would unmap the workloads' memory on its own schedule."""
    assert "numa_balancing=disable" in kernel_cmdline(plan("tcg")).split()
    assert "numa_balancing=disable" not in kernel_cmdline(plan("tcg", numa_nodes=1)).split()


def test_one_node_is_qemus_plain_machine():
    argv = qemu_argv(plan("tcg", numa_nodes=1, cpus=3))
    assert opt(argv, "-numa") == [] and opt(argv, "-object") == [] and opt(argv, "-smp") == ["3"]


def test_with_nodes_each_cpu_is_a_socket_of_its_own():
    """Cores of one socket share a cache; split across nodes, the kernel WARNs at boot (topology_sane)."""
    assert opt(qemu_argv(plan("tcg", cpus=2)), "-smp") == ["2,sockets=2,cores=1,threads=1"]


@pytest.mark.parametrize("cpus,mib,layout", [
    (1, 2048, [(1024, (0,)), (1024, ())]),               # a node may have memory and no CPU
    (3, 1537, [(769, (0, 1)), (768, (2,))]),              # the first node takes the odd MiB and CPU
    (4, 256, [(128, (0, 1)), (128, (2, 3))]),
])
def test_node_layout(cpus, mib, layout):
    p = plan("tcg", cpus=cpus, memory_mib=mib)
    assert node_layout(p) == layout
    assert sum(m for m, _ in layout) == mib
    nodes = opt(qemu_argv(p), "-numa")
    assert all("cpus=" not in n for n, (_, c) in zip(nodes, layout) if not c)


def test_more_nodes_than_memory_is_refused():
    with pytest.raises(ValueError):
        node_layout(plan("tcg", numa_nodes=4, memory_mib=6))
