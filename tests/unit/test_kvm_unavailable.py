"""Without KVM in the guest the KVM scenarios are skipped with the reason, never failed or passed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.config import ScenarioConfig
from harness.kvm.vmm import prepare_kvm
from harness.model.versions import features_for
from harness.scenarios import SCENARIOS
from harness.scenarios.base import ScenarioContext
from harness.vm.ssh import CommandResult


@dataclass
class FakeGuest:
    flags: str = "fpu sse2"
    modprobe_ok: bool = True
    dev_kvm: bool = True
    accel: str = "tcg"
    ran: list = field(default_factory=list)

    def cpu_flags(self) -> frozenset[str]:
        return frozenset(self.flags.split())

    def modprobe(self, module: str) -> CommandResult:
        self.ran.append(f"modprobe {module}")
        return CommandResult(f"modprobe {module}", 0 if self.modprobe_ok else 1, b"", "FATAL: Module not found", 0.0)

    def run(self, argv, timeout: float = 60.0) -> CommandResult:
        self.ran.append(" ".join(argv))
        return CommandResult(" ".join(argv), 0 if self.dev_kvm else 1, b"", "", 0.0)


def test_reasons():
    assert "neither svm nor vmx under tcg" in prepare_kvm(FakeGuest())
    assert "modprobe kvm_amd failed: FATAL" in prepare_kvm(FakeGuest("svm", modprobe_ok=False, dev_kvm=False))
    # Built in: modprobe has no module to load, and /dev/kvm is there.
    assert prepare_kvm(FakeGuest("svm", modprobe_ok=False)) is None
    assert "/dev/kvm did not appear after loading kvm_intel" in prepare_kvm(FakeGuest("vmx", dev_kvm=False))
    guest = FakeGuest("svm npt")
    assert prepare_kvm(guest) is None and guest.ran[0] == "modprobe kvm_amd"


@pytest.mark.parametrize("name", ["dirty-log", "kvm-thp-split", "kvm-ksm", "kvm-oom"])
def test_kvm_scenarios_skip_with_the_reason(name, tmp_path: Path):
    ctx = ScenarioContext(guest=FakeGuest(), features=features_for((6, 1)),  # type: ignore[arg-type]
                          config=ScenarioConfig(name=name), seed=1, out_dir=tmp_path, console_tail=lambda: "")
    verdict = SCENARIOS[name].run(ctx)
    assert verdict.status == "skip" and "neither svm nor vmx" in verdict.findings[0]
