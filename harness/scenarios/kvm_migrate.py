"""kvm-migrate: the pages of a running L2 migrated between the guest's NUMA nodes under KVM.

minivmm runs a VM whose test slot the L2 fills with a pattern; with KVM's tracepoints on and the
probe on the VMM's mm, mmops moves the slot's pages to the other node from outside
(`move_pages(2)` on the VMM's pid: `movepid`), and the L2 then reads every page.  Migration opens
try_to_migrate_one's CLEAR per 4 KiB page or PMD-mapped THP (docs/migrate.md) in the mover's task,
and KVM must see each as kvm_unmap_hva_range (harness/model/kvm_notifier.py cross_check); every
page must be on the new node and read back right through the L2's new SPTEs.  Once with 4 KiB
pages, once with THPs.
"""

from __future__ import annotations

from dataclasses import replace

from harness.guest import Guest
from harness.kvm.vmm import Vmm
from harness.model.families.migrate import judge_foreign_move
from harness.model.ops import HPAGE, Op
from harness.scenarios.base import KVM_NEEDS, PROBE_NEEDS, TRACE_NEEDS, NeedsKvm, ScenarioContext
from harness.scenarios.kvm import judge_observation, mmops_on_vmm, observe, read_check, slot_of
from harness.scenarios.migrate import numa_setup
from harness.verdict import Verdict

PAGE = 4096
# (minivmm's thp setting, pages): 1 MiB of 4 KiB pages; two 2 MiB THPs.
RUNS = (("never", 256), ("huge", 1024))


def move_vmm_pages(guest: Guest, pid: int, start: int, end: int) -> Op:
    """mmops's movepid: the VMM's [start, end) to the other node."""
    return mmops_on_vmm(guest, f"movepid:{pid}:{start:#x}:{end - start}", 60, "moving the VMM's pages")


class KvmMigrate(NeedsKvm):
    name = "kvm-migrate"
    description = ("an L2's pages (4 KiB and THP) moved to the other NUMA node under KVM: probe and KVM agree on "
                   "every unmap, every page moved, the L2 reads each right afterwards")
    needs: tuple[str, ...] = (*KVM_NEEDS, *PROBE_NEEDS, *TRACE_NEEDS, "CONFIG_NUMA", "CONFIG_MIGRATION",
                              "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_ARCH_ENABLE_THP_MIGRATION")

    def run_with_kvm(self, ctx: ScenarioContext) -> Verdict:
        skip = numa_setup(ctx)
        if skip:
            return skip
        findings: list[str] = []
        notes: list[str] = []
        base = 0x20000
        for thp, npages in RUNS:
            pages = list(range(npages))
            moved: list[Op] = []
            with Vmm(ctx.guest) as vmm:
                created = vmm.call("create", pages=npages, flags=0, thp=thp)
                slot = slot_of(created)
                vmm.call("write", pages=pages, value=base, index=1)

                def migrate() -> None:
                    moved.append(move_vmm_pages(ctx.guest, vmm.pid, *slot))
                    findings.extend(f"thp {thp}: {p}" for p in
                                    read_check(vmm, pages, [base + p for p in pages], "after the migration"))

                obs = observe(ctx.guest, vmm.pid, migrate)
            op = moved[0]
            if op.extra["moved"] != npages or op.extra["err"]:
                findings.append(f"thp {thp}: {op.extra['moved']} of {npages} pages moved to node "
                                f"{op.extra['node']} ({op.extra['failed']} elsewhere, errno {op.extra['err']})")
            if thp == "huge" and op.extra["thp_heads"] != npages * PAGE // HPAGE:
                findings.append(f"thp huge: {op.extra['thp_heads']} THPs in a slot of {npages * PAGE // HPAGE} "
                                f"blocks: minivmm's memory was not THP-backed")
            unit = HPAGE if thp == "huge" and op.extra["thp_heads"] else PAGE
            findings += [f"thp {thp}: {f.line()}" for f in judge_foreign_move(op, unit, obs.records)]
            (ctx.out_dir / thp).mkdir(exist_ok=True)     # each run's probe-events.txt and kvm-trace.txt
            cross, cross_notes = judge_observation(replace(ctx, out_dir=ctx.out_dir / thp), obs, slot, need=("unmap",))
            findings += [f"thp {thp}: {f}" for f in cross]
            notes += [f"thp {thp}: {op.extra['moved']} of {npages} pages to node {op.extra['node']} "
                      f"({op.extra['thp_heads']} THPs); " + "; ".join(cross_notes)]
        return Verdict.from_findings(findings, notes)
