"""What a scenario is: a name, a description, and run(context) -> Verdict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

from harness.config import ScenarioConfig
from harness.guest import Guest
from harness.kconfig import KernelConfig
from harness.kvm.vmm import prepare_kvm
from harness.model.versions import Features
from harness.verdict import Verdict

# What every scenario under the probe needs: a module to load, and the notifier it registers.
PROBE_NEEDS = ("CONFIG_MODULES", "CONFIG_MMU_NOTIFIER")
# A KVM host inside the guest.
KVM_NEEDS = ("CONFIG_KVM", "CONFIG_KVM_AMD|CONFIG_KVM_INTEL")
# KVM's tracepoints and the kprobes beside them, read through tracefs.
TRACE_NEEDS = ("CONFIG_EVENT_TRACING", "CONFIG_KPROBE_EVENTS")

# The runner brackets each scenario's part of the kernel log with `MARK_PREFIX begin NAME` and
# `MARK_PREFIX end NAME`.
MARK_PREFIX = "notifier-harness:"


@dataclass
class ScenarioContext:
    guest: Guest
    features: Features            # what the kernel under test has, from its release
    config: ScenarioConfig
    seed: int
    out_dir: Path                 # the scenario's own directory in the run
    console_tail: Callable[[], str]
    init_failures: tuple[str, ...] = ()   # NH-INIT: FAILED lines from boot
    kconfig: Optional[KernelConfig] = None  # the kernel's configuration, when it could be read
    # Host-side faults for the harness's own tests: "qemu-stop", "qemu-kill", "ssh-cut".
    host_fault: Callable[[str], None] = lambda fault: None


class Scenario(Protocol):
    name: str
    description: str
    # The config keys it reads besides `name` and `timeout`: any other key given for it is an error.
    knobs: frozenset[str]
    # The kernel options it needs ("A|B": either); a kernel without one skips it, naming the option.
    needs: tuple[str, ...]

    def run(self, ctx: ScenarioContext) -> Verdict: ...


class NeedsKvm:
    """A scenario that runs a VM inside the guest: skipped, with the reason, where the guest cannot
    be a KVM host (no svm/vmx in its CPU, no KVM modules); never failed or passed for that."""

    name = ""
    description = ""
    knobs: frozenset[str] = frozenset({"probe_corrupt"})
    needs: tuple[str, ...] = KVM_NEEDS

    def run(self, ctx: ScenarioContext) -> Verdict:
        reason = prepare_kvm(ctx.guest)
        if reason:
            return Verdict("skip", (reason,))
        return self.run_with_kvm(ctx)

    def run_with_kvm(self, ctx: ScenarioContext) -> Verdict:
        raise NotImplementedError
