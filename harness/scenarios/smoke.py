"""smoke: the kernel under test is the one asked for, boots clean, and can be a KVM host."""

from __future__ import annotations

import re

from harness.scenarios.base import ScenarioContext
from harness.verdict import Verdict

# The oops classifier of the crash-handling work will replace this list; it is
# enough to refuse a boot that already went wrong.
_BAD_LOG = re.compile(r"(Kernel panic - not syncing|Oops[:-]|BUG: |WARNING: |general protection fault"
                      r"|Call Trace:)")


class Smoke:
    name = "smoke"
    description = "uname -r is the expected release, /dev/kvm appears after loading KVM, no oops at boot"

    def run(self, ctx: ScenarioContext) -> Verdict:
        guest = ctx.guest
        findings: list[str] = []
        notes: list[str] = []
        findings += [f"guest init: {line}" for line in ctx.init_failures]

        release = guest.check(["uname", "-r"]).strip()
        if release != guest.release:
            findings.append(f"uname -r says {release!r}, expected {guest.release!r}")

        flags = guest.cpu_flags()
        vendor = "kvm_amd" if "svm" in flags else "kvm_intel" if "vmx" in flags else ""
        if not vendor:
            # Not the kernel's fault: the virtual CPU offers no virtualisation.
            notes.append(f"guest CPU shows neither svm nor vmx under {guest.accel}; /dev/kvm check skipped")
        else:
            loaded = guest.modprobe(vendor)
            if not loaded.ok:
                findings.append(f"modprobe {vendor} failed ({loaded.exit_status}): "
                                f"{(loaded.stderr or loaded.stdout).strip()}")
            exists = guest.run(["test", "-c", "/dev/kvm"])
            if not exists.ok:
                findings.append(f"/dev/kvm is not a character device after loading {vendor}")
            else:
                notes.append(f"/dev/kvm present after modprobe {vendor}")

        log = guest.dmesg()
        bad = [line for line in log.splitlines() if _BAD_LOG.search(line)]
        if bad:
            findings.append(f"kernel log shows {len(bad)} error line(s), first: {bad[0].strip()}")
        (ctx.out_dir / "dmesg.log").write_text(log)
        return Verdict.from_findings(findings, notes)
