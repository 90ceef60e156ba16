"""madv-free and madv-pageout: MADV_FREE, the lazily freed pages discarded by reclaim, and
MADV_PAGEOUT into zram swap (docs/madv-free.md; the model in harness/model/families/madv_free.py).

madv-free runs two workloads, each judged by the model:
  free      4 KiB pages over three VMAs (one CLEAR each), a page written again; a THP freed whole
            (it stays PMD-mapped) and another in part (split inside the window); the data kept.
  reclaim   in a memcg of its own with no swap: 2 MiB freed, two pages written again, then
            memory.reclaim: each discarded page under its 4 KiB CLEAR, after its young callback;
            the discarded pages read zero, the rewritten ones their new data.
madv-pageout: the workload pinned to CPU 0, a mapping made old with MADV_COLD (6.1's MADV_PAGEOUT
would otherwise flush its mmu_gather outside any window), paged out with MADV_PAGEOUT into zram,
each swapped page under its 4 KiB CLEAR (after clear_flush_young on 6.1; no young callback on
6.12), read back intact.
"""

from __future__ import annotations

from harness.model.families.madv_free import bitmap_pages
from harness.model.ops import PAGE
from harness.scenarios.base import PROBE_NEEDS, ScenarioContext
from harness.scenarios.memcg import Memcg
from harness.scenarios.mm import ProbeScenario, Script
from harness.scenarios.probe import judge_run, load_probe, run_mmops
from harness.scenarios.swap import ZramSwap
from harness.verdict import Verdict

FREE = Script("free", (
    "map:F:1M:nothp", "fill:F:5",
    "mprotect:F:256K:4K:r",           # three VMAs (the 1 MiB VMA holds no whole 2 MiB block: no split)
    "free:F:0:1M",                    # one CLEAR per VMA
    "write:F:8K:9",                   # a lazily freed page written again: no window, new data kept
    "verify:F",
    "map:T:4M:thp", "fill:T:2",
    "free:T:0:2M",                    # a whole PMD: made old and clean, still PMD-mapped, no nested window
    "free:T:3M:512K",                 # part of a PMD: split_huge_page's two CLEARs nested in the window
    "write:T:3136K:7",
    "verify:T",
))
RECLAIM = (
    "cpu:0",                          # the lazy-free batch drained by the same CPU's reclaim
    "map:L:2M:nothp", "fill:L:5",
    "free:L:0:2M",
    "write:L:8K:9", "write:L:1M:9",   # written again: must not be discarded
    "freereclaim:L",
)
PAGEOUT = (
    "cpu:0",                          # MADV_COLD needs every page on the LRU of the CPU it drains
    "map:P:1M:nothp", "fill:P:6",
    "cold:P:0:1M",
    "pageout:P:0:1M",
    "verify:P",                       # swapped back in intact
)


class MadvFree(ProbeScenario):
    name = "madv-free"
    description = "MADV_FREE: a CLEAR per VMA (THPs kept or split inside it); reclaim discards lazily freed pages"
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_MEMCG", "CONFIG_PROC_PAGE_MONITOR")
    scripts = (FREE,)

    def run(self, ctx: ScenarioContext) -> Verdict:
        verdict = super().run(ctx)
        findings, notes = list(verdict.findings), list(verdict.notes)
        with Memcg(ctx.guest, "nh-madv-free", None) as memcg:
            run = run_mmops(ctx.guest, "reclaim", RECLAIM, ["--cgroup", memcg.path], timeout=120)
        found, judgement = judge_run(run, ctx.features, ctx.out_dir)
        findings += found
        op = run.only_op("freereclaim")
        gone = len(bitmap_pages(op, "gone"))
        mine = [r for r in run.records if r.pid == run.pid and op.t0 <= r.time_ns <= op.t1]
        notes.append(f"reclaim: lru_gen/enabled {op.lru_gen:#06x}, memory.reclaim errno {op.errno}; {gone} of "
                     f"{(op.end - op.start) // PAGE} pages discarded, {op.extra['present']} present; {len(mine)} "
                     f"records from the reclaiming task; {judgement.checked_ops} operations checked")
        return Verdict.from_findings(findings, notes)


class MadvPageout(ProbeScenario):
    name = "madv-pageout"
    description = "MADV_PAGEOUT into zram: a 4 KiB CLEAR per swapped page, young callbacks by version, data intact"
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_SWAP", "CONFIG_ZRAM", "CONFIG_PROC_PAGE_MONITOR")

    def run(self, ctx: ScenarioContext) -> Verdict:
        load_probe(ctx.guest, ctx.config.probe_corrupt)
        notes: list[str] = []
        with ZramSwap(ctx.guest, 8):
            run = run_mmops(ctx.guest, "pageout", PAGEOUT, timeout=120)
        findings, judgement = judge_run(run, ctx.features, ctx.out_dir)
        op = run.only_op("pageout")
        swapped = len(bitmap_pages(op, "swapped"))
        notes.append(f"pageout: {swapped} of {(op.end - op.start) // PAGE} pages swapped out; "
                     f"{len(run.records)} records, {judgement.checked_ops} operations checked")
        return Verdict.from_findings(findings, notes)
