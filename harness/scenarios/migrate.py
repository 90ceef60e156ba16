"""migrate: pages moved between NUMA nodes and by compaction, under the probe.

The guest has two NUMA nodes (harness/vm/qemu_args.py).  Two workload runs, the workload pinned to
CPU 0 (node 0), so every page it faults starts on node 0:
  numa     move_pages(2) of a 4 KiB-page mapping to node 1 and mbind(2) MPOL_MF_MOVE back to
           node 0, then the same for a mapping of two PMD-mapped THPs (THP migration); the data
           verified after each move, the pages' nodes read before and after.
  compact  a mapping moved to node 1, every other page of it freed, then /proc/sys/vm/compact_memory;
           mmops reports which pages changed frame, and each of them must have had its window.
The model (harness/model/families/migrate.py) judges try_to_migrate_one's CLEAR per page or THP,
that no other window comes (none when the migration entries are removed), and the THP state.
"""

from __future__ import annotations

import re
from typing import Optional

from harness.guest_data import GuestDataError, int_list_field, only
from harness.model.families.migrate import judge_compaction_moves
from harness.scenarios.base import PROBE_NEEDS, ScenarioContext
from harness.scenarios.probe import format_finding, judge_run, load_probe, mmops_source, run_mmops
from harness.verdict import Verdict

NUMA = ("cpu:0", "map:A:1M:nothp", "fill:A:3", "numa:A:1", "verify:A", "mbind:A:0", "verify:A",
        "map:T:4M:thp", "fill:T:5", "numa:T:1", "verify:T", "mbind:T:0", "verify:T")
# The mapping moves to node 1 first: that node holds little else, and a fresh zone hands out its
# lowest frames first (boot frees its pages to the tail of the free lists, __free_pages_core), so
# the pages sit where compaction's migrate scanner starts and it moves them up to free frames.
COMPACT = ("cpu:0", "map:F:8M:nothp", "fill:F:7", "numa:F:1", "fragment:F", "compact:F")
NODES = "/sys/devices/system/node"
_NODE = re.compile(r"node\d{1,4}", re.ASCII)


def numa_setup(ctx: ScenarioContext) -> Optional[Verdict]:
    """The set-up of a scenario that moves pages between NUMA nodes: a skip where the guest has fewer
    than two, else the probe loaded and None."""
    nodes = [w for w in ctx.guest.check(["ls", NODES]).split() if _NODE.fullmatch(w)]
    if len(nodes) < 2:
        return Verdict("skip", (f"the guest has {len(nodes)} NUMA node(s) ({NODES}); moving pages between "
                                f"nodes needs two",))
    load_probe(ctx.guest, ctx.config.probe_corrupt)
    return None


class Migrate:
    name = "migrate"
    description = "move_pages, mbind and compaction: try_to_migrate_one's CLEAR per page or THP, nothing on removal"
    knobs = frozenset({"probe_corrupt"})
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_NUMA", "CONFIG_MIGRATION", "CONFIG_COMPACTION",
                              "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_ARCH_ENABLE_THP_MIGRATION")

    def run(self, ctx: ScenarioContext) -> Verdict:
        skip = numa_setup(ctx)
        if skip:
            return skip
        findings: list[str] = []
        notes: list[str] = []
        numa = run_mmops(ctx.guest, "numa", NUMA)
        found, judgement = judge_run(numa, ctx.features, ctx.out_dir)
        findings += found
        moves = [op for op in numa.ops if op.kind in ("numa", "mbind")]
        notes.append("numa: " + "; ".join(f"{op.kind} {op.name} -> node {op.extra['node']}: {op.extra['moved']} of "
                                          f"{op.extra['pages']} pages moved" for op in moves)
                     + f"; {len(judgement.trace.pairs)} windows")
        compact = run_mmops(ctx.guest, "compact", COMPACT)
        found, judgement = judge_run(compact, ctx.features, ctx.out_dir)
        findings += found
        op = compact.only_op("compact")
        source = mmops_source(compact.name)
        line = only([l for l in compact.lines if l.get("op") == "compact"], "compact line", source)
        moved = int_list_field(line, "moved_pages", source, lo=op.start, hi=op.end - 1)
        if len(moved) != op.extra["moved"] or any(p % 4096 for p in moved):
            raise GuestDataError(source, f"moved_pages does not list {op.extra['moved']} page addresses", line)
        findings += [format_finding(compact.name, f)
                     for f in judge_compaction_moves(op, moved, judgement.trace.pairs, compact.records)]
        own = [p for p in judgement.trace.pairs if p.start.pid == compact.pid and op.t0 <= p.start.time_ns <= op.t1]
        notes.append(f"compact: {op.extra['moved']} of {op.extra['pages']} pages of the fragmented mapping changed "
                     f"frame; {len(own)} migration windows in the workload's mm from its own compaction")
        return Verdict.from_findings(findings, notes)
