"""The probe scenarios of kernel-semantics.md §3: each runs mmops scripts under
the probe and has the model judge every callback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from harness.scenarios.base import PROBE_NEEDS, ScenarioContext
from harness.scenarios.probe import judge_run, load_probe, run_mmops
from harness.verdict import Verdict


@dataclass(frozen=True)
class Script:
    name: str                      # names the run's files and its findings
    ops: tuple[str, ...]
    attach: tuple[str, ...] = ()   # nhctl attach options


class ProbeScenario:
    name = ""
    description = ""
    knobs = frozenset({"probe_corrupt"})
    needs: tuple[str, ...] = PROBE_NEEDS
    scripts: Sequence[Script] = ()

    def run(self, ctx: ScenarioContext) -> Verdict:
        load_probe(ctx.guest, ctx.config.probe_corrupt)
        features = ctx.features
        findings: list[str] = []
        notes: list[str] = []
        for script in self.scripts:
            run = run_mmops(ctx.guest, script.name, script.ops, script.attach)
            run_findings, judgement = judge_run(run, features, ctx.out_dir)
            findings += run_findings
            notes.append(f"{script.name}: {len(run.records)} records, {judgement.checked_ops} operations checked, "
                         f"{len(judgement.trace.pairs)} windows, {len(judgement.background)} from other tasks")
        return Verdict.from_findings(findings, notes)


class MmBasic(ProbeScenario):
    name = "mm-basic"
    description = "munmap, MADV_DONTNEED and mprotect on 4 KiB pages, with VMA splits, against the model"
    # The model expects the 2 MiB CLEARs of split_huge_pmd (and, for cow, a THP).
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_TRANSPARENT_HUGEPAGE")
    scripts = (
        Script("basic", (
            "map:A:8M:nothp",
            "dontneed:A:12K:20K",            # one VMA: one CLEAR, exactly the range
            "mprotect:A:1028K:64K:r",        # splits at two unaligned points of one block: one 2 MiB CLEAR
            "dontneed:A:1M:256K",            # three VMAs now: one CLEAR per VMA
            "munmap:A:3080K:8K",             # an unaligned hole: one split CLEAR, then UNMAP
            "mprotect:A:4M:2052K:r",         # aligned start, unaligned end in the next block
            "munmap:A:6M:1M",                # aligned: no split CLEAR, UNMAP only
            "munmap:A:7M:1M",                # the mapping's tail, 2 MiB-aligned end
        )),
    )


class ThpSplit(ProbeScenario):
    name = "thp-split"
    description = "splitting PMD-mapped THPs by MADV_DONTNEED, mprotect, munmap and debugfs split_huge_pages"
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_DEBUG_FS")
    scripts = (
        Script("dontneed", ("map:A:4M:thp", "dontneed:A:4K:4K", "dontneed:A:2M:2M")),
        Script("mprotect", ("map:A:4M:thp", "mprotect:A:1M:4K:r", "mprotect:A:2M:2M:r")),
        Script("munmap", ("map:A:4M:thp", "munmap:A:2052K:4K", "munmap:A:0:2M")),
        Script("debugfs", ("map:A:6M:thp", "mprotect:A:2M:8K:r", "split:A:0:6M")),
    )


class Cow(ProbeScenario):
    name = "cow"
    description = "fork then write: PROTECTION_PAGE per private VMA, then the COW CLEAR of one page"
    # The model expects the 2 MiB CLEARs of split_huge_pmd (and, for cow, a THP).
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_TRANSPARENT_HUGEPAGE")
    scripts = (
        Script("cow-4k", ("map:A:1M:nothp", "cow:A:12K")),
        Script("cow-thp", ("map:A:2M:thp", "cow:A:8K")),
    )


class ExitRelease(ProbeScenario):
    name = "exit-release"
    description = "exit calls release exactly once and nothing follows it (also with the mm held until detach)"
    scripts = (
        Script("exit", ("map:A:1M:nothp",)),
        Script("exit-held", ("map:A:1M:nothp",), attach=("--hold",)),
    )
