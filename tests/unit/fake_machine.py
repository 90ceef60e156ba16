"""A machine without QEMU for the runner's unit tests: real Machine and SshSession subclasses whose
boot, commands and console are scripted, so the runner's policy (rows, reboots, errors) is tested
without a guest."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from harness.artifacts.initramfs import Initramfs
from harness.artifacts.kernel import Kernel
from harness.artifacts.prepare import Prepared
from harness.kernelspec import KernelSpec
from harness.verdict import Verdict
from harness.vm.machine import Machine
from harness.vm.ssh import CommandResult, SshSession, quote_argv

# A guest command line -> (exit status, stdout)
Answer = Callable[[str], tuple[int, bytes]]

OOPS = """[   12.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000
[   12.000001] #PF: supervisor write access in kernel mode
[   12.000002] Oops: 0002 [#1] PREEMPT SMP NOPTI
[   12.000003] RIP: 0010:nh_debug_oops+0x5/0x10 [nh_probe]
[   12.000004] ---[ end trace 0000000000000000 ]---
"""


def healthy(command: str) -> tuple[int, bytes]:
    if "/proc/sys/kernel/tainted" in command:
        return 0, b"4096\n"
    if "/proc/config.gz" in command:
        return 1, b""          # no IKCONFIG_PROC: the configuration is unknown
    return 0, b""


class FakeSsh(SshSession):
    def __init__(self, answer: Answer):       # no transport: every command is answered by `answer`
        self.answer = answer
        self.port = 0
        self.commands: list[str] = []

    def run(self, argv: Union[str, Sequence[str]], timeout: float = 60.0, stdin: Optional[bytes] = None,
            watch: Optional[Callable[[], None]] = None) -> CommandResult:
        command = quote_argv(argv)
        self.commands.append(command)
        status, out = self.answer(command)
        return CommandResult(argv=command, exit_status=status, stdout_bytes=out, stderr="", duration_s=0.0)

    def close(self) -> None:
        pass


class FakeConsole:
    init_failures: list[str] = []
    dropped = 0
    write_error = ""

    def tail(self, lines: int = 25) -> str:
        return ""


class FakeMachine(Machine):
    """Boots at once; `answer` answers commands; a scenario puts kernel text on the console through
    ctx.host_fault("console:TEXT")."""

    answer: Answer = staticmethod(healthy)
    boots: list["FakeMachine"] = []

    def boot(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._ssh = FakeSsh(type(self).answer)
        self.console = FakeConsole()      # type: ignore[assignment]
        self.console_text = ""
        self.boot_s = 0.01
        FakeMachine.boots.append(self)

    def check_health(self) -> None:
        pass

    def inject_host_fault(self, fault: str) -> None:
        self.console_text += fault.removeprefix("console:")

    def console_offset(self) -> int:
        return len(self.console_text)

    def read_console(self, offset: int) -> str:
        return self.console_text[offset:]

    def shutdown(self, soft: bool = True) -> None:
        self.shutdown_how = self.shutdown_how or ("powerdown" if soft else "quit")
        self._ssh = None


def fake_prepare(spec: KernelSpec, cache: Path) -> Prepared:
    release = {"debian:6.1": "6.1.0-99-cloud-amd64", "debian:6.12": "6.12.99+deb12-cloud-amd64",
               "tree:/src/linux-6.6": "6.6.0-nh"}[spec.text]
    kernel = Kernel(spec=spec, release=release, image=cache / "vmlinuz", modules_dir=cache, build_dir=None)
    return Prepared(kernel=kernel, initramfs=Initramfs(path=cache / "initrd", host_key="ecdsa-sha2-nistp256 AAAA",
                                                       digest="0" * 64, modules=(), built=False))


class Scripted:
    """A scenario that does what it is told: `act(ctx)` returns its verdict."""

    knobs: frozenset[str] = frozenset()

    def __init__(self, name: str, act: Callable[..., Verdict], needs: tuple[str, ...] = ()):
        self.name = name
        self.description = name
        self.act = act
        self.needs = needs

    def run(self, ctx) -> Verdict:   # noqa: ANN001 - ScenarioContext
        return self.act(ctx)
