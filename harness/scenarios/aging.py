"""aging: the young callbacks (kernel-semantics.md §3, aging).

Two workload runs, each judged by the model:
  khugepaged  the workload pinned to CPU 0 (MADV_COLD drains only its own CPU's LRU
              batches, and skips pages still in another's), a 4 MiB mapping is made
              old with MADV_COLD, a few pages of its first
              2 MiB block are touched again, and khugepaged scans it: test_young
              for exactly the old PTEs, a collapse (CLEAR over the block) only of
              the block with a referenced PTE.
  reclaim     a mapping in the workload's own memcg is reclaimed through
              memory.reclaim into zram swap: clear_flush_young (or clear_young
              from MGLRU's look-around, by version and lru_gen/enabled) before
              each page's 4 KiB CLEAR, the data intact when read back from swap.
"""

from __future__ import annotations

from harness.events import Callback
from harness.scenarios.base import PROBE_NEEDS, ScenarioContext
from harness.scenarios.memcg import Memcg
from harness.scenarios.probe import judge_run, load_probe, run_mmops
from harness.scenarios.swap import ZramSwap
from harness.verdict import Verdict


class Aging:
    name = "aging"
    description = "test_young from khugepaged on old PTEs only; clear_flush_young/clear_young from reclaim by version"
    knobs = frozenset({"probe_corrupt", "reclaim", "khugepaged_timeout"})
    # khugepaged, and reclaim of the workload's memcg into zram swap.
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_MEMCG", "CONFIG_SWAP", "CONFIG_ZRAM")

    def run(self, ctx: ScenarioContext) -> Verdict:
        cfg, guest = ctx.config, ctx.guest
        load_probe(guest, cfg.probe_corrupt)
        findings: list[str] = []
        notes: list[str] = []
        wait = int(cfg.khugepaged_timeout_s)
        scan = run_mmops(guest, "khugepaged", ["cpu:0", "map:B:4M:nothp", "cold:B:0:4M", "touch:B:1M:64K",
                                               f"khugepaged:B:{wait}", "verify:B"], timeout=wait + 60)
        found, judgement = judge_run(scan, ctx.features, ctx.out_dir)
        findings += found
        op = scan.only_op("khugepaged")
        tested = [r for r in scan.records if r.pid == op.khugepaged_pid]
        notes.append(f"khugepaged pid {op.khugepaged_pid}: full_scans {op.full_scans_before} -> {op.full_scans}, "
                     f"{sum(r.callback == Callback.TEST_YOUNG for r in tested)} test_young, collapse_alloc "
                     f"{op.collapse_alloc} (failed {op.collapse_alloc_failed}), AnonHugePages {op.anon_huge_kb} kB; "
                     f"{judgement.checked_ops} operations checked")
        mib = cfg.reclaim_mib
        with ZramSwap(guest, 4 * mib), Memcg(guest, "nh-aging", None) as memcg:
            reclaim = run_mmops(guest, "reclaim", [f"map:A:{mib}M:nothp", "fill:A:5", "reclaim:A", "verify:A"],
                                ["--cgroup", memcg.path], timeout=120)
        found, judgement = judge_run(reclaim, ctx.features, ctx.out_dir)
        findings += found
        op = reclaim.only_op("reclaim")
        mine = [r for r in reclaim.records if r.pid == reclaim.pid and op.t0 <= r.time_ns <= op.t1]
        counts = {c: sum(r.callback == c for r in mine)
                  for c in (Callback.CLEAR_FLUSH_YOUNG, Callback.CLEAR_YOUNG, Callback.START)}
        notes.append(f"reclaim: lru_gen/enabled {op.lru_gen:#06x}, memory.reclaim errno {op.errno}, "
                     f"{op.swap_kb} kB of {mib} MiB swapped; {counts[Callback.CLEAR_FLUSH_YOUNG]} clear_flush_young, "
                     f"{counts[Callback.CLEAR_YOUNG]} clear_young, {counts[Callback.START]} windows from the "
                     f"reclaiming task")
        return Verdict.from_findings(findings, notes)
