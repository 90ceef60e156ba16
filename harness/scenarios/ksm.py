"""ksm: ksmd merges identical pages; a write copies one back; MADV_UNMERGEABLE breaks the rest;
the data stays intact throughout (kernel-semantics.md §3, KSM merge)."""

from __future__ import annotations

from harness.scenarios.base import PROBE_NEEDS, ScenarioContext
from harness.scenarios.probe import judge_run, load_probe, run_mmops
from harness.verdict import Verdict


class Ksm:
    name = "ksm"
    description = "ksmd merges identical pages (CLEAR per page, change_pte on 6.1), COW on write, unmerge, data intact"
    knobs = frozenset({"probe_corrupt", "ksm_pages", "ksm_timeout"})
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_KSM")

    def run(self, ctx: ScenarioContext) -> Verdict:
        cfg = ctx.config
        load_probe(ctx.guest, cfg.probe_corrupt)
        script = [f"map:K:{cfg.ksm_pages * 4}K:nothp", "fill:K:7", f"ksm:K:{int(cfg.ksm_timeout_s)}", "verify:K",
                  "write:K:8K:9", "verify:K", "unmerge:K", "verify:K"]
        run = run_mmops(ctx.guest, "ksm", script, timeout=cfg.ksm_timeout_s + 60)
        findings, judgement = judge_run(run, ctx.features, ctx.out_dir)
        ksm = run.only_op("ksm")
        ksmd = [r for r in run.records if r.pid == ksm.ksmd_pid]
        notes = [f"ksmd pid {ksm.ksmd_pid}: full_scans {ksm.full_scans_before} -> {ksm.full_scans}, "
                 f"ksm_merging_pages {ksm.merging_pages} of {cfg.ksm_pages}, {len(ksmd)} records from ksmd; "
                 f"{len(run.records)} records in all, {judgement.checked_ops} operations checked"]
        return Verdict.from_findings(findings, notes)
