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
    if plan.extra_cmdline:
        args.append(plan.extra_cmdline)
    return " ".join(args)


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
        "-machine", "pc",
        *accel,
        "-smp", str(plan.cpus),
        "-m", f"{plan.memory_mib}M",
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
