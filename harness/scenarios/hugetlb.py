"""hugetlb: 2 MiB hugetlb pages under the probe (docs/hugetlb.md).

The pool is reserved for the scenario through vm.nr_hugepages (put back afterwards) and a hugetlbfs
mount holds the shared file.  Three workload runs, each judged by the model:
  private  an anonymous MAP_PRIVATE | MAP_HUGETLB mapping: faults, mprotect (VMA splits),
           MADV_DONTNEED, fork with a COW write (copy_hugetlb_page_range, hugetlb_wp), munmap and
           mremap (move_hugetlb_page_tables); the child's copy and every page checked.
  shared   one hugetlbfs file mapped MAP_SHARED | MAP_NORESERVE twice, 1 GiB each at 1 GiB-aligned
           addresses, so that the two mappings share PMD pages: MADV_DONTNEED and mremap widened to
           the GiB (adjust_range_if_pmd_sharing_possible), mprotect of a whole mapping, munmap and
           mremap splitting it (hugetlb_unshare_pmds), a small anonymous shared mapping beside them;
           the data read back through both mappings.
  steal    the owner of a private mapping's reservation forks, the rest of the pool is reserved, and
           the owner writes the page it shares with the child: with no page to copy into, the kernel
           unmaps the page from the child (unmap_ref_private -> unmap_hugepage_range).  That window is
           in the child's mm, which has no notifier unless the probe is attached to it: mmops runs
           without nhctl run and attaches the probe to its child itself (hsteal).
"""

from __future__ import annotations

from harness.artifacts.guest_build import MMOPS, NHCTL
from harness.errors import GuestError
from harness.guest import Guest
from harness.guest_data import field, parse_int, parse_json_lines
from harness.scenarios.base import PROBE_NEEDS, ScenarioContext
from harness.scenarios.mm import ProbeScenario, Script
from harness.scenarios.probe import WorkloadRun, detach_and_drain, judge_run, mmops_source, parse_mmops_ops
from harness.verdict import Verdict

NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"
MOUNT = "/tmp/nh-hugetlbfs"
POOL_PAGES = 16          # the scripts hold at most 8 huge pages at once
GIB = "1024M"

SCRIPTS = (
    Script("private", (
        "hmap:P:8M:private",
        "htouch:P:0:8M:1",           # faults: no window
        "hverify:P:0:8M",
        "hprotect:P:2M:2M:r",        # two splits (private: no unshare), PROTECTION_VMA of the piece
        "hprotect:P:2M:2M:rw",       # hugetlb VMAs never merge (VM_DONTEXPAND): three VMAs stay
        "hdontneed:P:4M:2M",         # CLEAR (6.1: a nested UNMAP); the private copy is gone
        "hverify:P:0:8M",            # the dropped page reads zeros
        "hcow:P:0:5",                # fork: a CLEAR per private VMA; the COW's CLEAR of the page
        "htouch:P:2M:2M:6",          # the child is gone: the page is reused, no window
        "hverify:P:0:8M",
        "hunmap:P:6M:2M",            # UNMAP (6.1: nested per VMA)
        "hmremap:P:4M:2M:Q",         # move_hugetlb_page_tables' CLEAR, then the old range unmapped
        "hverify:Q:0:2M",
    )),
    Script("shared", (
        f"hfile:S:{MOUNT}/shared:{GIB}:shared:noreserve",
        f"hfile:T:{MOUNT}/shared:{GIB}:shared:noreserve",
        "htouch:S:0:6M:1",           # S faults its PMD page in
        "htouch:T:2M:2M:2",          # T's fault shares S's PMD page: no window
        "hverify:T:0:6M",
        "hdontneed:T:0:2M",          # widened to T's GiB; huge_pmd_unshare drops T's shared PMD
        "hverify:S:0:6M",
        "hverify:T:0:6M",            # refaulted, shared again
        f"hprotect:S:0:{GIB}:r",     # the whole VMA: no split, PROTECTION_VMA of the GiB
        f"hprotect:S:0:{GIB}:rw",
        "hmremap:T:4M:2M:U",         # CLEAR widened to T's GiB; the old range's split unshares the GiB
        "hverify:U:0:2M",
        "hunmap:S:2M:2M",            # the split unshares S's GiB (hugetlb_unshare_pmds), then UNMAP
        "hverify:S:0:2M",
        "hverify:T:0:4M",
        "hmap:A:4M:shared",          # anonymous shared, no aligned GiB: nothing widened
        "htouch:A:0:4M:3",
        "hdontneed:A:2M:2M",
        "hverify:A:0:4M",            # shared: the data stays in the file
    )),
)

# The probe follows the child (whose mm the owner's write unmaps the page from), not mmops itself.
STEAL = Script("steal", ("hmap:P:2M:private", "htouch:P:0:2M:1", "hfill:X", f"hsteal:P:0:2:{NHCTL}",
                         "hverify:P:0:2M"))


def run_steal(guest: Guest) -> WorkloadRun:
    """mmops without nhctl run: its hsteal operation attaches the probe to its child itself (holding
    the child's mm until the detach, so that release comes after mmops's exit line).  The probe is
    detached and drained afterwards whatever happened."""
    source = mmops_source(STEAL.name)
    try:
        result = guest.run([MMOPS, "--no-probe", *STEAL.ops], timeout=120)
    finally:
        stats, records = detach_and_drain(guest)
    lines = parse_json_lines(result.stdout, source)
    if not result.ok:
        errors = [field(line, "error", str, source)[:300] for line in lines if "error" in line]
        raise GuestError(f"{STEAL.name}: workload exited with status {result.exit_status}"
                         f"{': ' + errors[0] if errors else ''}")
    pid, ops = parse_mmops_ops(guest, lines, source)
    return WorkloadRun(name=STEAL.name, lines=lines, pid=pid, ops=ops, records=records, stats=stats)


class HugePool:
    """vm.nr_hugepages raised to `pages` and a hugetlbfs mount; both put back afterwards."""

    def __init__(self, guest: Guest, pages: int, mount: str):
        self.guest = guest
        self.pages = pages
        self.mount = mount
        self.saved = -1

    def __enter__(self) -> "HugePool":
        g = self.guest
        self.saved = parse_int(g.read_text(NR_HUGEPAGES), NR_HUGEPAGES, lo=0, hi=1 << 40)
        made = g.run(["sh", "-c", 'set -e; echo "$1" > "$2"; mkdir -p "$3"; mount -t hugetlbfs -o pagesize=2M none "$3"',
                      "hugepool", str(max(self.pages, self.saved)), NR_HUGEPAGES, self.mount])
        total = parse_int(g.read_text(NR_HUGEPAGES), NR_HUGEPAGES, lo=0, hi=1 << 40)
        if not made.ok or total < self.pages:
            self.remove()
            raise GuestError(f"the hugetlb pool could not be set up: {total} of {self.pages} 2 MiB pages; "
                             f"{(made.stderr or made.stdout).strip()[-300:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        if self.saved < 0:
            return
        # The files hold their pages until removed; then the pool can shrink back.
        self.guest.run(["sh", "-c", 'if grep -q " $1 " /proc/mounts; then rm -f "$1"/*; umount "$1"; fi; '
                        'echo "$2" > "$3"', "hugepool", self.mount, str(self.saved), NR_HUGEPAGES], timeout=60)
        self.saved = -1


class Hugetlb(ProbeScenario):
    name = "hugetlb"
    description = ("2 MiB hugetlb pages: faults, mprotect, MADV_DONTNEED and mremap widened for shared PMDs, "
                   "munmap splits unsharing them, fork and COW, data checked")
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_HUGETLBFS", "CONFIG_ARCH_WANT_HUGE_PMD_SHARE")
    scripts = SCRIPTS

    def run(self, ctx: ScenarioContext) -> Verdict:
        with HugePool(ctx.guest, POOL_PAGES, MOUNT):
            verdict = super().run(ctx)
            steal = run_steal(ctx.guest)
            found, judgement = judge_run(steal, ctx.features, ctx.out_dir)
        op = steal.only_op("hsteal")
        return Verdict.from_findings([*verdict.findings, *found], [
            *verdict.notes, f"steal: the probe on the child (pid {op.child}), {len(steal.records)} records, "
                            f"{len(judgement.trace.pairs)} windows; the child maps {op.extra['child_huge_kb']} kB "
                            f"there afterwards"])
