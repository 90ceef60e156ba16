"""smoke: the kernel under test is the one asked for, boots clean, and can be a KVM host."""

from __future__ import annotations

from harness.console_reports import classify
from harness.kvm.vmm import load_kvm
from harness.kconfig import skip_reason
from harness.scenarios.base import KVM_NEEDS, MARK_PREFIX, ScenarioContext
from harness.verdict import Verdict


def boot_part(dmesg: str) -> str:
    """The kernel log up to the first scenario's begin marker."""
    marker = f"] {MARK_PREFIX} begin "
    at = dmesg.find(marker)
    return dmesg if at < 0 else dmesg[:dmesg.rfind("\n", 0, at) + 1]


class Smoke:
    name = "smoke"
    description = "uname -r is the expected release, /dev/kvm appears after loading KVM, no oops at boot"
    knobs: frozenset[str] = frozenset()
    needs: tuple[str, ...] = ()

    def run(self, ctx: ScenarioContext) -> Verdict:
        guest = ctx.guest
        findings: list[str] = []
        notes: list[str] = []
        findings += [f"guest init: {line}" for line in ctx.init_failures]

        release = guest.check(["uname", "-r"]).strip()
        if release != guest.release:
            findings.append(f"uname -r says {release!r}, expected {guest.release!r}")

        unconfigured = ctx.kconfig.missing(KVM_NEEDS) if ctx.kconfig else []
        module, problem = (None, None) if unconfigured else load_kvm(guest)
        if unconfigured:
            notes.append(f"the kernel is not configured as a KVM host ({skip_reason(unconfigured)}); "
                         f"/dev/kvm check skipped")
        elif module is None:
            # Not the kernel's fault: the virtual CPU offers no virtualisation.
            notes.append(f"guest CPU shows neither svm nor vmx under {guest.accel}; /dev/kvm check skipped")
        elif problem:
            findings.append(problem)
        else:
            notes.append(f"/dev/kvm present after modprobe {module}")

        # The runner classifies the scenario's own console slice; the boot before the first scenario
        # is smoke's, and only that: what earlier scenarios of this boot caused is theirs.
        log = guest.dmesg()
        findings += [f"boot log: kernel {r.kind}: {r.title}" for r in classify(boot_part(log))]
        (ctx.out_dir / "dmesg.log").write_text(log)
        return Verdict.from_findings(findings, notes)
