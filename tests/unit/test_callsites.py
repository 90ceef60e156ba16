"""The call-site tables of 6.1 and 6.12 and resolving kernel stacks to them."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.model.callsites import (INLINED, JUDGED_BY, PMD_SIZE, PTE_SIZE, RANGE, YOUNG, frame_name, resolve,
                                     resolve_frames, sites_for)
from harness.scenarios import SCENARIOS

DATA = Path(__file__).parent.parent / "data" / "ftrace"
V61, V612 = (6, 1), (6, 12)
START = "__mmu_notifier_invalidate_range_start"
# What the trigger form of the stack shows above the entry point: the kprobe handler and the ftrace
# trampoline (an address with no symbol).
TRACER = ["kprobe_trace_func", "kprobe_dispatcher", "kprobe_ftrace_handler", "0xffffffffc04c70c8"]

# `grep -rn mmu_notifier_range_init --include=*.c mm fs kernel` in each version's source, by file.
RANGE_61 = {
    "clear_refs_write", "__replace_page", "__split_huge_pmd", "__split_huge_pud", "__unmap_hugepage_range",
    "copy_hugetlb_page_range", "hugetlb_change_protection", "hugetlb_unshare_pmds", "hugetlb_wp",
    "move_hugetlb_page_tables", "collapse_and_free_pmd", "collapse_huge_page", "replace_page",
    "write_protect_page", "madvise_free_single_vma", "wp_clean_pre_vma", "copy_page_range",
    "remove_device_exclusive_entry", "unmap_vmas", "wp_page_copy", "zap_page_range", "zap_page_range_single",
    "__migrate_device_pages", "migrate_vma_collect", "change_pmd_range", "move_page_tables",
    "__oom_reap_task_mm", "page_make_device_exclusive_one", "page_vma_mkclean_one", "try_to_migrate_one",
    "try_to_unmap_one",
}
RANGE_612 = (RANGE_61 - {"collapse_and_free_pmd", "zap_page_range", "change_pmd_range", "__unmap_hugepage_range"}
             | {"change_pud_range", "unmap_hugepage_range", "do_pagemap_scan", "move_pages_pte",
                "move_pages_huge_pmd", "collapse_pte_mapped_thp", "retract_page_tables"})
UNREACHABLE = {"__split_huge_pud", "wp_clean_pre_vma", "remove_device_exclusive_entry", "__migrate_device_pages",
               "migrate_vma_collect", "page_make_device_exclusive_one"}


def names(version: tuple[int, int], kind: str) -> set[str]:
    return {s.name for s in sites_for(version).of_kind(kind)}


def kallsyms(version: str) -> set[str]:
    """The recorded symbols (compiler suffixes dropped)."""
    lines = (DATA / f"{version}-kallsyms.txt").read_text().splitlines()
    return {frame_name(line.split()[1]) for line in lines if line and not line.startswith("#")}


# --- the tables ---------------------------------------------------------------------------------

def test_range_sites_are_the_issues_lists():
    assert names(V61, RANGE) == RANGE_61 and len(RANGE_61) == 31
    assert names(V612, RANGE) == RANGE_612 and len(RANGE_612) == 34


@pytest.mark.parametrize("version, reachable", [(V61, 25), (V612, 28)])
def test_six_range_sites_are_out_of_reach_with_a_reason(version, reachable):
    sites = sites_for(version).of_kind(RANGE)
    assert sum(s.reachable for s in sites) == reachable
    out = {s.name: s.unreachable for s in sites if not s.reachable}
    assert set(out) == UNREACHABLE
    assert "CONFIG_DEVICE_PRIVATE" in out["migrate_vma_collect"] and "test_hmm" in out["migrate_vma_collect"]
    assert "DAX" in out["__split_huge_pud"] and "vmwgfx" in out["wp_clean_pre_vma"]


def test_young_sites_by_version():
    assert names(V61, YOUNG) == {"folio_referenced_one", "hpage_collapse_scan_pmd", "__collapse_huge_page_isolate",
                                 "damon_ptep_mkold", "damon_pmdp_mkold", "damon_young_pmd_entry", "__damon_pa_young",
                                 "page_idle_clear_pte_refs_one"}
    assert names(V612, YOUNG) == {"folio_referenced_one", "hpage_collapse_scan_pmd", "__collapse_huge_page_isolate",
                                  "damon_ptep_mkold", "damon_pmdp_mkold", "damon_young_pmd_entry",
                                  "damon_folio_young_one", "page_idle_clear_pte_refs_one", "lru_gen_look_around",
                                  "walk_pte_range", "walk_pmd_range_locked"}
    t61, t612 = sites_for(V61), sites_for(V612)
    assert "CONFIG_DAMON" in (t61.site("damon_ptep_mkold").unreachable or "")
    assert t612.site("damon_ptep_mkold").reachable
    assert "IDLE_PAGE_TRACKING" in (t612.site("page_idle_clear_pte_refs_one").unreachable or "")
    assert {s.callback for s in t612.of_kind(YOUNG)} == {"clear_flush_young", "clear_young", "test_young"}


@pytest.mark.parametrize("version", [V61, V612])
def test_every_site_is_described_once(version):
    table = sites_for(version)
    assert len({s.name for s in table.sites}) == len(table.sites)
    for s in table.sites:
        assert s.file.endswith(".c") and s.reach, s


def test_other_versions_use_the_nearest_table_read_before_them():
    assert sites_for(V61).verified and sites_for(V612).verified
    for version, base in [((6, 6), V61), ((6, 11), V61), ((5, 15), V61), ((6, 13), V612), ((7, 0), V612)]:
        table = sites_for(version)
        assert table.table_version == base and not table.verified and table.version == version
        assert {s.name for s in table.sites} == {s.name for s in sites_for(base).sites}


@pytest.mark.parametrize("version, label", [(V61, "6.1"), (V612, "6.12")])
def test_inlining_table_agrees_with_the_guests_kallsyms(version, label):
    """A reachable site is a symbol of its own, or INLINED says where it went; every host is a symbol."""
    symbols = kallsyms(label)
    table = sites_for(version)
    for site in table.sites:
        if site.reachable:
            assert site.name in symbols or site.name in INLINED[version], site.name
    for site, hosts in INLINED[version].items():
        assert table.site(site) is not None, site
        assert all(h in symbols for h in hosts), (site, hosts)
        if site != "walk_pmd_range_locked":
            assert site not in symbols, f"{site} has a symbol of its own on {label}"


def test_judged_by_names_sites_and_scenarios_that_exist():
    every = {s.name for v in (V61, V612) for s in sites_for(v).sites}
    for site, scenarios in JUDGED_BY.items():
        assert site in every, site
        assert scenarios and all(n in SCENARIOS for n in scenarios), (site, scenarios)
    # the sites expect.py and reaper.py judge; families (harness/model/families/) add theirs
    assert JUDGED_BY["zap_page_range_single"][:2] == ("mm-basic", "thp-split")
    assert JUDGED_BY["__oom_reap_task_mm"] == ("memcg-oom", "memcg-oom-nonblock-fail")


# --- frames -------------------------------------------------------------------------------------

@pytest.mark.parametrize("frame, name", [
    ("zap_page_range_single", "zap_page_range_single"),
    ("zap_page_range_single+0x105/0x1a0", "zap_page_range_single"),
    ("install_breakpoint.isra.0", "install_breakpoint"),
    ("page_vma_mkclean_one.constprop.0+0x5/0x10", "page_vma_mkclean_one"),
    ("kvm_mmu_notifier_release+0x1a/0x80 [kvm]", "kvm_mmu_notifier_release"),
    ("oom_reaper.cold", "oom_reaper"),
    ("foo.part.0.isra.0", "foo"),
    ("0xffffffffc04c70c8", "0xffffffffc04c70c8"),
])
def test_frame_name(frame, name):
    assert frame_name(frame) == name


# --- resolving ----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [V61, V612])
def test_a_site_with_its_own_frame(version):
    stack = [START, "zap_page_range_single", "do_madvise", "__x64_sys_madvise"]
    assert resolve(stack, version).name == "zap_page_range_single"
    assert resolve(TRACER + stack, version).name == "zap_page_range_single"
    assert resolve([f + "+0x10/0x20" for f in stack], version).name == "zap_page_range_single"


def test_inlined_sites_resolve_through_their_host_per_version():
    mprotect = [START, "change_protection", "mprotect_fixup", "do_mprotect_pkey"]
    assert resolve(mprotect, V61).name == "change_pmd_range"
    assert resolve(mprotect, V612).name == "change_pud_range"
    merge = [START, "try_to_merge_one_page", "try_to_merge_with_ksm_page", "ksm_scan_thread"]
    assert resolve(merge, V61).name == resolve(merge, V612).name == "replace_page"
    # 6.12 inlines wp_page_copy into do_wp_page, madvise_free_single_vma into do_madvise and
    # move_pages_pte into move_pages; 6.1 keeps the first two as functions (and has no UFFDIO_MOVE)
    cow = [START, "do_wp_page", "__handle_mm_fault"]
    assert resolve(cow, V612).name == "wp_page_copy"
    r = resolve_frames(cow, V61)
    assert r.site is None and r.frame == "do_wp_page" and "none of 6.1's range sites" in r.problem
    assert resolve([START, "do_madvise", "__x64_sys_madvise"], V612).name == "madvise_free_single_vma"
    assert resolve([START, "madvise_free_single_vma", "do_madvise"], V61).name == "madvise_free_single_vma"
    assert resolve([START, "move_pages", "userfaultfd_ioctl"], V612).name == "move_pages_pte"
    assert resolve([START, "move_pages_huge_pmd", "move_pages"], V612).name == "move_pages_huge_pmd"


def test_the_entry_point_picks_the_kind_in_a_frame_that_hosts_both():
    """collapse_huge_page starts its own window, and asks test_young through the inlined
    __collapse_huge_page_isolate: one frame, two sites told apart by the probe."""
    stack = ["collapse_huge_page", "hpage_collapse_scan_pmd", "khugepaged"]
    for version in (V61, V612):
        assert resolve([START] + stack, version).name == "collapse_huge_page"
        assert resolve(["__mmu_notifier_test_young"] + stack, version).name == "__collapse_huge_page_isolate"
        assert resolve(stack, version, entry="__mmu_notifier_test_young").name == "__collapse_huge_page_isolate"


def test_young_sites_need_the_right_callback():
    assert resolve(["__mmu_notifier_clear_flush_young", "folio_referenced_one", "rmap_walk_anon"],
                   V61).name == "folio_referenced_one"
    r = resolve_frames(["__mmu_notifier_clear_young", "folio_referenced_one"], V61)
    assert r.site is None and "folio_referenced_one is none of 6.1's young sites" in r.problem
    assert resolve(["__mmu_notifier_clear_young", "lru_gen_look_around", "folio_referenced_one"],
                   V612).name == "lru_gen_look_around"
    assert resolve(["__mmu_notifier_clear_young", "lru_gen_look_around"], V61) is None   # 6.1's MGLRU: no notifier


def test_two_sites_inlined_into_one_frame_are_ambiguous_unless_the_size_tells():
    stack = ["__mmu_notifier_clear_young", "walk_pud_range", "walk_pgd_range", "__walk_page_range"]
    r = resolve_frames(stack, V612)
    assert r.site is None and r.ambiguous
    assert {s.name for s in r.candidates} == {"walk_pte_range", "walk_pmd_range_locked"}
    assert r.problem == "ambiguous: walk_pud_range hosts walk_pmd_range_locked or walk_pte_range"
    assert resolve(stack, V612, size=PTE_SIZE).name == "walk_pte_range"
    assert resolve(stack, V612, size=PMD_SIZE).name == "walk_pmd_range_locked"
    assert resolve_frames(stack, V612, size=12345).ambiguous
    # its own out-of-line copy names it
    assert resolve(["__mmu_notifier_clear_young", "walk_pmd_range_locked", "walk_pud_range"],
                   V612).name == "walk_pmd_range_locked"


def test_the_notifier_cores_frames_are_skipped():
    stack = [START, "mn_hlist_invalidate_range_start", START, "unmap_vmas", "exit_mmap"]
    assert resolve(stack, V61).name == "unmap_vmas"
    assert resolve(["__mmu_notifier_test_young+0x4/0xa0", "mn_hlist_test_young", "hpage_collapse_scan_pmd"],
                   V612).name == "hpage_collapse_scan_pmd"


def test_sites_out_of_the_cloud_kernels_reach_still_resolve():
    """A tree built with CONFIG_DEVICE_PRIVATE reaches them; the frame is what counts."""
    site = resolve([START, "page_make_device_exclusive_one", "rmap_walk_anon"], V61)
    assert site.name == "page_make_device_exclusive_one" and not site.reachable
    assert resolve([START, "migrate_vma_setup", "dmirror_migrate"], V612).name == "migrate_vma_collect"


@pytest.mark.parametrize("frames, entry, problem", [
    ([], None, "no frame below the notifier core"),
    ([START], None, "no frame below the notifier core"),
    (TRACER, None, "no frame below the notifier core"),
    (["zap_page_range_single", "do_madvise"], None, "no notifier entry point in the stack or given"),
    ([START, "zap_page_range_single"], "__mmu_notifier_test_young",
     "the stack went through __mmu_notifier_invalidate_range_start, not __mmu_notifier_test_young"),
    (["zap_page_range_single"], "do_madvise", "do_madvise is not a notifier entry point"),
    ([START, "some_driver_fn", "ioctl"], None, "some_driver_fn is none of 6.1's range sites"),
    ([START, "dup_mmap", "copy_process"], None, "dup_mmap is none of 6.1's range sites"),
])
def test_stacks_that_name_no_site_say_why(frames, entry, problem):
    r = resolve_frames(frames, V61, entry=entry)
    assert r.site is None and r.problem == problem
    assert resolve(frames, V61, entry=entry) is None
