"""The QEMU command line, built as a list from typed inputs (never a shell string)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Marker the guest's init prints once sshd is started.
READY_MARKER = "NH-INIT: ready"


@dataclass(frozen=True)
class QemuPlan:
    """Everything the argv depends on."""

    qemu: str
    kernel: Path
    initrd: Path
    accel: str               # "kvm" or "tcg"
    cpus: int
    memory_mib: int
    qmp_socket: Path
    ssh_port: int
    ssh_pubkey: str          # "ecdsa-sha2-nistp256 AAAA...", passed on the kernel command line
    extra_cmdline: str = ""
    # NUMA nodes the guest sees.  Two on every boot: page migration between nodes (move_pages,
    # mbind) is one of the notifier's call sites, and the other scenarios pass the same with them
    # (NUMA balancing off, one socket per CPU).
    numa_nodes: int = 2


# The NUMA layout's memory is split on this boundary, so each node holds whole huge pages.
NODE_ALIGN_MIB = 2


def opt_value(value: object) -> str:
    """A value inside a QEMU `key=value,...` option: QEMU reads `,,` as a literal comma, so a path
    with a comma in it ($TMPDIR) cannot end the value and add options of its own."""
    return str(value).replace(",", ",,")


def kernel_cmdline(plan: QemuPlan) -> str:
    key_type, _, key_data = plan.ssh_pubkey.partition(" ")
    args = [
        "console=ttyS0",
        # Reboot at once on a panic; with -no-reboot QEMU then exits, so a panic
        # before pvpanic is loaded still ends the run instead of hanging it.
        "panic=-1",
        # No sleeping "random: crng init" waits in sshd on a fresh guest.
        "random.trust_cpu=on",
        f"nh.sshkey={key_type}:{key_data.split()[0]}",
    ]
    if plan.numa_nodes > 1:
        # Automatic NUMA balancing (on by default in the Debian kernels once there are two nodes)
        # unmaps a running task's memory every scan period through change_prot_numa: PROTECTION
        # windows on every workload's mm that no operation asked for.
        args.append("numa_balancing=disable")
    if plan.extra_cmdline:
        args.append(plan.extra_cmdline)
    return " ".join(args)


def node_layout(plan: QemuPlan) -> list[tuple[int, tuple[int, ...]]]:
    """(MiB, CPUs) per NUMA node: memory split evenly in NODE_ALIGN_MIB steps (node 0 takes the
    rest), CPUs in contiguous blocks, the first nodes taking one more when they do not divide."""
    nodes = plan.numa_nodes
    if nodes < 1 or plan.memory_mib < nodes * NODE_ALIGN_MIB:
        raise ValueError(f"{nodes} NUMA nodes for {plan.memory_mib} MiB")
    share = plan.memory_mib // nodes // NODE_ALIGN_MIB * NODE_ALIGN_MIB
    mems = [plan.memory_mib - share * (nodes - 1)] + [share] * (nodes - 1)
    per, extra = divmod(plan.cpus, nodes)
    out, cpu = [], 0
    for i, mib in enumerate(mems):
        n = per + (1 if i < extra else 0)
        out.append((mib, tuple(range(cpu, cpu + n))))
        cpu += n
    return out


def smp(plan: QemuPlan) -> str:
    """-smp: with NUMA nodes, one socket per CPU.  QEMU 7.2 puts the CPUs of a plain `-smp N` in one
    socket, whose cores share a last-level cache; a node boundary through that socket makes the
    kernel WARN at boot (topology_sane: "llc-sibling CPU #0 is not on the same node")."""
    if plan.numa_nodes <= 1:
        return str(plan.cpus)
    return f"{plan.cpus},sockets={plan.cpus},cores=1,threads=1"


def numa_args(plan: QemuPlan) -> list[str]:
    """One RAM backend and one -numa node per node (QEMU 7.2 refuses the legacy `mem=` form on
    current machine types); none for a single node."""
    if plan.numa_nodes <= 1:
        return []
    args = []
    for i, (mib, cpus) in enumerate(node_layout(plan)):
        args += ["-object", f"memory-backend-ram,id=nh-mem{i},size={mib}M"]
        node = f"node,nodeid={i},memdev=nh-mem{i}"
        if cpus:
            node += f",cpus={cpus[0]}-{cpus[-1]}"
        args += ["-numa", node]
    return args


def qemu_argv(plan: QemuPlan) -> list[str]:
    if plan.accel == "kvm":
        accel = ["-accel", "kvm", "-cpu", "host"]
    elif plan.accel == "tcg":
        # thread=single: one host thread runs the vCPUs in turn.  Under multi-threaded TCG a vCPU
        # can run a stale translation of kernel text another vCPU has just patched (static keys:
        # at boot, on memcg creation, on a KVM VM's creation) and take an int3 the kernel no longer
        # expects, an Oops that is QEMU's, not the kernel's; it failed about one `make test` in
        # three.  On a 2-core host single is also faster (the harness needs a core too).
        # -cpu max exposes svm (and npt), so the guest kernel can itself run KVM.
        accel = ["-accel", "tcg,thread=single", "-cpu", "max"]
    else:
        raise ValueError(f"accelerator {plan.accel!r}")
    return [
        plan.qemu,
        "-nodefaults", "-no-user-config", "-display", "none",
        # q35, not pc: on pc, enabling a PCI device routes its INTx through an ACPI PCI interrupt
        # link, whose AML took 6.1's virtio_pci probe 0.1 s under TCG (6.12 builds virtio_pci in and
        # paid it during the kernel's own boot).  Measured interleaved, 11 boots each: boot-to-SSH
        # 2.42 -> 2.34 s on 6.1, 2.91 -> 2.85 s on 6.12.
        "-machine", "q35",
        *accel,
        "-smp", smp(plan),
        "-m", f"{plan.memory_mib}M",
        *numa_args(plan),
        "-kernel", str(plan.kernel),
        "-initrd", str(plan.initrd),
        "-append", kernel_cmdline(plan),
        # The serial console is QEMU's stdout; QEMU's own messages go to stderr.
        "-chardev", "stdio,id=console,signal=off",
        "-serial", "chardev:console",
        # QMP on a unix socket in the run's private 0700 directory.
        "-chardev", f"socket,id=qmp,path={opt_value(plan.qmp_socket)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        # restrict=on: the guest reaches nothing but the forwarded port.
        "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{plan.ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=net0",
        # A guest panic arrives as a GUEST_PANICKED event; QEMU pauses so the
        # state can be inspected before the harness stops it.
        "-device", "pvpanic",
        "-action", "panic=pause",
        "-no-reboot",
    ]
