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

Around both runs the primary MMU's young-bit clears are traced with the notifier core's young entry
points (harness/scenarios/youngtrace.py) and judged by the pairing rule (harness/model/young.py):
every clear on the workload's mm reaches the secondary MMUs in the same call (6.12's MGLRU
look-around and page-table walk included), unless the kernel clears it that way by design
(MADV_COLD in the khugepaged run, 6.1's MGLRU); and the young callbacks the notifier core was
entered with are the ones the probe recorded.
"""

from __future__ import annotations

from harness.events import Callback
from harness.model.findings import Finding
from harness.model.versions import Features
from harness.model.young import Hit, check_probe_saw, judge_young, mm_of
from harness.scenarios.base import PROBE_NEEDS, TRACE_NEEDS, ScenarioContext
from harness.scenarios.memcg import Memcg
from harness.scenarios.probe import WorkloadRun, format_finding, judge_run, load_probe, run_mmops
from harness.scenarios.swap import ZramSwap
from harness.scenarios.youngtrace import YoungTrace
from harness.verdict import Verdict


def judge_pairing(run: WorkloadRun, hits: list[Hit], features: Features) -> tuple[list[str], str]:
    """The pairing rule on one workload run's young-bit trace, and the probe's account checked
    against the notifier core's; (findings, a note)."""
    ops = [op for op in run.ops if op.kind not in ("exit",)]
    exit_op = next((op for op in run.ops if op.kind == "exit"), None)
    since = min(op.t0 for op in ops) / 1e9 if ops else 0.0
    until = exit_op.t0 / 1e9 if exit_op else float("inf")
    mm = mm_of(hits, run.pid)
    if mm is None:
        return [f"{run.name}: the young-bit trace has no release of the workload's mm (pid {run.pid}); "
                f"its clears cannot be told from other processes'"], ""
    judgement = judge_young(hits, features, mms={mm}, since=since, until=until)
    found: list[Finding] = judgement.findings + check_probe_saw(hits, run.records, mm, pid_of=run.name)
    return [format_finding(run.name, f) for f in found], f"{run.name}: {judgement.summary()}"


class Aging:
    name = "aging"
    description = "test_young from khugepaged on old PTEs only; clear_flush_young/clear_young from reclaim by version"
    knobs = frozenset({"probe_corrupt", "reclaim", "khugepaged_timeout"})
    # khugepaged, and reclaim of the workload's memcg into zram swap.
    needs: tuple[str, ...] = (*PROBE_NEEDS, *TRACE_NEEDS, "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_MEMCG",
                              "CONFIG_SWAP", "CONFIG_ZRAM")

    def run(self, ctx: ScenarioContext) -> Verdict:
        cfg, guest = ctx.config, ctx.guest
        load_probe(guest, cfg.probe_corrupt)
        findings: list[str] = []
        notes: list[str] = []
        wait = int(cfg.khugepaged_timeout_s)
        mib = cfg.reclaim_mib
        # One set of young-bit kprobes for both runs (placing kprobes is slow under TCG): the trace is
        # collected, and emptied, after each.
        with YoungTrace(guest) as trace:
            scan = run_mmops(guest, "khugepaged", ["cpu:0", "map:B:4M:nothp", "cold:B:0:4M", "touch:B:1M:64K",
                                                   f"khugepaged:B:{wait}", "verify:B"], timeout=wait + 60)
            scan_hits = trace.collect()
            with ZramSwap(guest, 4 * mib), Memcg(guest, "nh-aging", None) as memcg:
                reclaim = run_mmops(guest, "reclaim", [f"map:A:{mib}M:nothp", "fill:A:5", "reclaim:A", "verify:A"],
                                    ["--cgroup", memcg.path], timeout=120)
            reclaim_hits = trace.stop()
        found, judgement = judge_run(scan, ctx.features, ctx.out_dir)
        findings += found
        findings += self._pairing(trace, scan, scan_hits, ctx, notes)
        op = scan.only_op("khugepaged")
        tested = [r for r in scan.records if r.pid == op.khugepaged_pid]
        notes.append(f"khugepaged pid {op.khugepaged_pid}: full_scans {op.full_scans_before} -> {op.full_scans}, "
                     f"{sum(r.callback == Callback.TEST_YOUNG for r in tested)} test_young, collapse_alloc "
                     f"{op.collapse_alloc} (failed {op.collapse_alloc_failed}), AnonHugePages {op.anon_huge_kb} kB; "
                     f"{judgement.checked_ops} operations checked")
        found, judgement = judge_run(reclaim, ctx.features, ctx.out_dir)
        findings += found
        findings += self._pairing(trace, reclaim, reclaim_hits, ctx, notes)
        op = reclaim.only_op("reclaim")
        mine = [r for r in reclaim.records if r.pid == reclaim.pid and op.t0 <= r.time_ns <= op.t1]
        counts = {c: sum(r.callback == c for r in mine)
                  for c in (Callback.CLEAR_FLUSH_YOUNG, Callback.CLEAR_YOUNG, Callback.START)}
        notes.append(f"reclaim: lru_gen/enabled {op.lru_gen:#06x}, memory.reclaim errno {op.errno}, "
                     f"{op.swap_kb} kB of {mib} MiB swapped; {counts[Callback.CLEAR_FLUSH_YOUNG]} clear_flush_young, "
                     f"{counts[Callback.CLEAR_YOUNG]} clear_young, {counts[Callback.START]} windows from the "
                     f"reclaiming task")
        return Verdict.from_findings(findings, notes)

    @staticmethod
    def _pairing(trace: YoungTrace, run: WorkloadRun, hits: list[Hit], ctx: ScenarioContext,
                 notes: list[str]) -> list[str]:
        if trace.unavailable:
            notes.append(f"{run.name}: young-bit pairing not judged: {trace.unavailable}")
            return []
        (ctx.out_dir / f"{run.name}.young.txt").write_text("".join(h.describe() + "\n" for h in hits))
        found, note = judge_pairing(run, hits, ctx.features)
        if note:
            notes.append(note)
        return found
