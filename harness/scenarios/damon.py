"""damon: DAMON's virtual-address monitoring of the workload, its young callbacks judged.

mmops starts two kdamonds on itself through /sys/kernel/mm/damon/admin, one on its virtual
addresses (one region per mapping: a 4 KiB-page mapping and a THP mapping), one on the physical
frames of some pages of each mapping's second half, and reads the first half of each while DAMON
samples for half a second.  The model (harness/model/families/damon.py) judges the kdamonds' young
callbacks: clear_young at each sampled entry (damon_ptep_mkold, damon_pmdp_mkold), test_young only
at an address it made old (damon_young_pmd_entry, damon_folio_young_one), no window.  The young-bit trace
(harness/scenarios/youngtrace.py) pairs every primary clear kdamond makes with its secondary
callback (harness/model/young.py).  Kernels without DAMON (Debian's 6.1 cloud config) are skipped
with the option named.
"""

from __future__ import annotations

import json

from harness.errors import GuestError
from harness.model.expect import judge
from harness.model.families.damon import explained_unaligned
from harness.model.ops import ModelError
from harness.scenarios.aging import judge_pairing
from harness.scenarios.base import PROBE_NEEDS, TRACE_NEEDS, ScenarioContext
from harness.scenarios.probe import format_finding, load_probe, run_mmops, stream_problems
from harness.scenarios.youngtrace import YoungTrace
from harness.verdict import Verdict

SCRIPT = ("cpu:0", "map:A:2M:nothp", "map:T:4M:thp", "fill:A:5", "fill:T:6", "damon:500:A:T", "verify:A", "verify:T")


class Damon:
    name = "damon"
    description = "DAMON monitoring the workload: clear_young at each sample, test_young on what it made old"
    knobs = frozenset({"probe_corrupt"})
    needs: tuple[str, ...] = (*PROBE_NEEDS, *TRACE_NEEDS, "CONFIG_DAMON_VADDR", "CONFIG_DAMON_PADDR",
                              "CONFIG_DAMON_SYSFS", "CONFIG_TRANSPARENT_HUGEPAGE")

    def run(self, ctx: ScenarioContext) -> Verdict:
        load_probe(ctx.guest, ctx.config.probe_corrupt)
        notes: list[str] = []
        with YoungTrace(ctx.guest) as trace:
            run = run_mmops(ctx.guest, "damon", SCRIPT)
            hits = trace.stop()
        op = run.only_op("damon")
        kdamond = op.extra["kdamond_pid"]
        findings = stream_problems(run.name, run.stats, run.records)
        try:
            judgement = judge(run.records, run.ops, run.pid, ctx.features)
        except ModelError as e:
            raise GuestError(f"{run.name}: {e}") from None
        kept, unaligned = explained_unaligned(judgement.findings, run.records, kdamond)
        findings += [format_finding(run.name, f) for f in kept]
        base = ctx.out_dir / run.name
        base.with_suffix(".ops.json").write_text(json.dumps(run.lines, indent=1) + "\n")
        base.with_suffix(".events.txt").write_text("".join(r.describe() + "\n" for r in run.records))
        base.with_suffix(".findings.json").write_text(json.dumps([f.to_json() for f in kept], indent=1) + "\n")
        kdamond_pa = op.extra["kdamond_pa_pid"]
        mine = [r for r in run.records if r.pid == kdamond]
        pa = [r for r in run.records if r.pid == kdamond_pa]
        notes.append(f"vaddr kdamond pid {kdamond}: {len(mine)} young callbacks in {(op.t1 - op.t0) // 1000000} ms, "
                     f"{unaligned} clear_young ranges starting at DAMON's unaligned sampling address (the kernel's "
                     f"behaviour: not counted against the page-aligned range rule); paddr kdamond pid {kdamond_pa} "
                     f"on {op.extra['frames']} frames: {len(pa)} young callbacks")
        if trace.unavailable:
            notes.append(f"young-bit pairing not judged: {trace.unavailable}")
        else:
            (ctx.out_dir / f"{run.name}.young.txt").write_text("".join(h.describe() + "\n" for h in hits))
            found, note = judge_pairing(run, hits, ctx.features)
            findings += found
            notes += [note] if note else []
        return Verdict.from_findings(findings, notes)
