"""pagemap-uffd: PAGEMAP_SCAN's write-protection, with and without a WP_ASYNC userfaultfd, and
UFFDIO_MOVE of 4 KiB pages and of a PMD-mapped THP (harness/model/families/uffd.py judges the
windows; docs/uffd.md).  Linux 6.7 brought the one and 6.8 the other: older kernels skip it."""

from __future__ import annotations

from harness.scenarios.base import PROBE_NEEDS, ScenarioContext
from harness.scenarios.mm import ProbeScenario, Script
from harness.verdict import Verdict


class PagemapUffd(ProbeScenario):
    name = "pagemap-uffd"
    description = ("PAGEMAP_SCAN with PM_SCAN_WP_MATCHING (a PROTECTION_VMA window per walk) and UFFDIO_MOVE "
                   "(a CLEAR of each source page or THP), with the data checked at the destination")
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_USERFAULTFD",
                              "CONFIG_PTE_MARKER_UFFD_WP", "CONFIG_PROC_PAGE_MONITOR")
    scripts = (
        Script("pagemap-uffd", (
            "map:A:6M:nothp",
            "pmscan:A:0:8M",              # no userfaultfd: one window, reaching past the mapping too
            "uffd-wpscan:A:2",            # 768 written pages: the second scan walks twice
            "verify:A",
            "map:S:4M:thp",
            "map:P:1M:nothp",
            "uffd-move:P:0:64K:D:5",      # 16 pages: a 4 KiB CLEAR each
            "uffd-move:S:0:2M:E:6",       # a PMD-mapped THP: one 2 MiB CLEAR
            "verify:D", "verify:E",
        )),
    )

    def run(self, ctx: ScenarioContext) -> Verdict:
        f = ctx.features
        if not (f.pagemap_scan and f.uffd_move):
            return Verdict("skip", (f"{f.label} has no PAGEMAP_SCAN (6.7) and no UFFDIO_MOVE (6.8): "
                                    f"do_pagemap_scan, move_pages_pte and move_pages_huge_pmd do not exist there",))
        return super().run(ctx)
