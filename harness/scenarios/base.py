"""What a scenario is: a name, a description, and run(context) -> Verdict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from harness.config import ScenarioConfig
from harness.guest import Guest
from harness.kvm.vmm import prepare_kvm
from harness.model.versions import Features
from harness.verdict import Verdict

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
    # Host-side faults for the harness's own tests: "qemu-stop", "qemu-kill", "ssh-cut".
    host_fault: Callable[[str], None] = lambda fault: None


class Scenario(Protocol):
    name: str
    description: str
    # The config keys it reads besides `name` and `timeout`: any other key given for it is an error.
    knobs: frozenset[str]

    def run(self, ctx: ScenarioContext) -> Verdict: ...


class NeedsKvm:
    """A scenario that runs a VM inside the guest: skipped, with the reason, where the guest cannot
    be a KVM host (no svm/vmx in its CPU, no KVM modules); never failed or passed for that."""

    name = ""
    description = ""
    knobs: frozenset[str] = frozenset({"probe_corrupt"})

    def run(self, ctx: ScenarioContext) -> Verdict:
        reason = prepare_kvm(ctx.guest)
        if reason:
            return Verdict("skip", (reason,))
        return self.run_with_kvm(ctx)

    def run_with_kvm(self, ctx: ScenarioContext) -> Verdict:
        raise NotImplementedError
