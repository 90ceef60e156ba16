"""shmem-collapse: MADV_COLLAPSE of memfd mappings, shared (two of one file) and private with an
anon_vma, and of an anonymous range (harness/model/families/collapse.py judges the windows;
docs/collapse.md)."""

from __future__ import annotations

from harness.scenarios.base import PROBE_NEEDS
from harness.scenarios.mm import ProbeScenario, Script


class ShmemCollapse(ProbeScenario):
    name = "shmem-collapse"
    description = ("MADV_COLLAPSE of shmem: try_to_unmap_one's 4 KiB CLEARs in every mapping of the file, "
                   "then the retracted page tables' 2 MiB CLEARs (collapse_and_free_pmd on 6.1; retract_page_tables "
                   "and collapse_pte_mapped_thp on 6.12); of anonymous memory: collapse_huge_page")
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_SHMEM", "CONFIG_MEMFD_CREATE")
    scripts = (
        Script("collapse", (
            "shmap:S:4M:shared",          # a memfd, every page mapped small
            "shmap:T:4M:shared:S",        # a second mapping of the same file
            "shmap:P:4M:private",         # another memfd, private: an anon_vma, one private copy at 2M
            "map:A:2M:nothp",
            "collapse:S:0:2M",            # unmapped in S and T, then S's (6.12: and T's) table retracted
            "collapse:T:0:2M",            # the page cache is huge now: T's table (6.1) or just its PMD
            "collapse:P:0:2M",            # 6.1: EINVAL, the anon_vma keeps the table; 6.12: collapsed
            "collapse:P:0:2M",            # 6.1: collapse_pte_mapped_thp; 6.12: PMD-mapped, nothing
            "collapse:P:2M:2M",           # the private copy aborts it: EINVAL on both
            "collapse:A:0:2M",            # anonymous: collapse_huge_page
            "verify:S", "verify:T", "verify:P", "verify:A",
        )),
    )
