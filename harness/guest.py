"""The guest session scenarios use: run commands, read files, load modules.

It wraps the SSH session of a booted Machine and the kernel it runs; it never
builds QEMU command lines and never shuts the machine down.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

from harness.errors import CommandTimeout, GuestError
from harness.vm.accel import read_cpu_flags
from harness.vm.ssh import OUTPUT_LIMIT, CommandResult, SshSession


@dataclass
class Guest:
    ssh: SshSession
    release: str          # the release the harness booted
    accel: str
    # The guest's RAM: no workload of ours maps more, so the model refuses larger ranges.
    memory_mib: int = 2048
    # The running scenario's time limit: no command may outlive it.
    deadline: Optional[float] = None
    budget_s: float = 0.0
    # Raises MachineLost when the machine is gone (the runner passes Machine.check_health).
    watch: Optional[Callable[[], None]] = None
    # What the guest's tools said about how the running scenario's commands went, for its row's
    # notes (the runner empties it before each scenario).
    notes: list[str] = field(default_factory=list)

    def start_budget(self, seconds: float) -> None:
        self.budget_s = seconds
        self.deadline = time.monotonic() + seconds

    def timeout_for(self, wanted: float) -> float:
        """`wanted`, cut to what is left of the scenario's budget (CommandTimeout if nothing is)."""
        if self.deadline is None:
            return wanted
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CommandTimeout(f"scenario time limit of {self.budget_s:.0f} s exceeded")
        return min(wanted, left)

    def run(self, argv: Union[str, Sequence[str]], timeout: float = 60.0) -> CommandResult:
        """Run and return the result whatever its exit status; an output flood is an error (what is
        kept of it would be parsed as if it were whole)."""
        result = self.ssh.run(argv, timeout=self.timeout_for(timeout), watch=self.watch)
        if result.dropped:
            raise GuestError(f"guest command printed more than the harness keeps ({result.dropped} bytes "
                             f"dropped past {OUTPUT_LIMIT >> 20} MiB): {result.argv[:200]}")
        return result

    def check(self, argv: Union[str, Sequence[str]], timeout: float = 60.0) -> str:
        """Run, insist on exit 0, return stdout."""
        result = self.run(argv, timeout=timeout)
        if not result.ok:
            raise GuestError(f"guest command failed with status {result.exit_status}: {result.argv}: "
                             f"{(result.stderr or result.stdout).strip()[-500:]}")
        return result.stdout

    def read_text(self, path: str) -> str:
        return self.check(["cat", path])

    def cpu_flags(self) -> frozenset[str]:
        return read_cpu_flags(self.read_text("/proc/cpuinfo"))

    def modprobe(self, module: str) -> CommandResult:
        return self.run(["modprobe", module])

    def kmsg(self, text: str) -> None:
        """Write a line into the kernel log, to slice it per scenario."""
        self.check(["sh", "-c", 'echo "$1" > /dev/kmsg', "kmsg", text])

    def dmesg(self) -> str:
        return self.check(["dmesg"])
