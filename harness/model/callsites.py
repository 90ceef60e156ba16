"""The kernel's notifier call sites, per version, and resolving a kernel stack to one of them.

A call site is the function that starts a notifier window (it calls
mmu_notifier_range_init() and then mmu_notifier_invalidate_range_start()),
kind "range", or that asks the secondary MMUs about young bits (through
ptep_clear_flush_young_notify, ptep_clear_young_notify, mmu_notifier_test_young
and their pmd forms), kind "young".  The range sites are every call of
mmu_notifier_range_init() in mm/, fs/ and kernel/ of Linux 6.1 (31) and 6.12
(34); the young sites every caller of the young notifiers there.

The harness sees a site as a kernel stack recorded by a kprobe on the
notifier core's entry point (__mmu_notifier_invalidate_range_start,
__mmu_notifier_clear_flush_young, __mmu_notifier_clear_young,
__mmu_notifier_test_young).  The inline wrappers (mmu_notifier_*,
ptep_*_notify) leave no frame, so the frame right below the entry point is
the site's function -- unless the compiler inlined the site into its caller,
in which case it is that caller.  INLINED records, per version, which sites
the Debian cloud kernels inline and where (read from /proc/kallsyms and from
stacks recorded in the guest: tests/data/ftrace).  A host frame that could be
two sites of the same kind is told apart by the window's size where that
differs (a PTE's 4 KiB or a PMD's 2 MiB); otherwise the stack is ambiguous
and is reported as such, never guessed.

Versions other than 6.1 and 6.12 get the table of the nearest version read
before them (6.1 for 6.2 to 6.11) with `verified` False.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence

RANGE = "range"
YOUNG = "young"

V61 = (6, 1)
V612 = (6, 12)
VERIFIED = (V61, V612)
BOTH = frozenset(VERIFIED)
ONLY_61 = frozenset({V61})
ONLY_612 = frozenset({V612})

# The notifier core's entry points a kprobe watches, and the kind of site each is called from.
ENTRY_POINTS: Mapping[str, str] = {
    "__mmu_notifier_invalidate_range_start": RANGE,
    "__mmu_notifier_clear_flush_young": YOUNG,
    "__mmu_notifier_clear_young": YOUNG,
    "__mmu_notifier_test_young": YOUNG,
}
# The young callback each young entry point delivers.
YOUNG_CALLBACK: Mapping[str, str] = {
    "__mmu_notifier_clear_flush_young": "clear_flush_young",
    "__mmu_notifier_clear_young": "clear_young",
    "__mmu_notifier_test_young": "test_young",
}

PTE_SIZE = 4096
PMD_SIZE = 2 << 20

# Why a site cannot be reached on the Debian cloud kernels (the same reasons on 6.1 and 6.12).
DEVICE_PRIVATE = ("device memory: needs CONFIG_DEVICE_PRIVATE and the test_hmm module (CONFIG_TEST_HMM), "
                  "which the Debian cloud kernels lack; reachable on a tree built with them")
DAX_PUD = ("only a PUD-mapped DAX file is split here (CONFIG_FS_DAX with a pmem or device-DAX namespace "
           "of 1 GiB pages): the guest has no such device")
VMWGFX = ("mm/mapping_dirty_helpers.c is built only for vmwgfx (CONFIG_DRM_VMWGFX selects "
          "CONFIG_MAPPING_DIRTY_HELPERS), which the cloud kernels do not build")
NO_DAMON_61 = "CONFIG_DAMON is off in Debian's 6.1 cloud config"
NO_IDLE = "CONFIG_IDLE_PAGE_TRACKING is off in the Debian cloud configs (/sys/kernel/mm/page_idle)"


@dataclass(frozen=True)
class CallSite:
    name: str                     # the function, as in the kernel source
    file: str                     # its source file
    kind: str                     # RANGE or YOUNG
    reach: str                    # how a user reaches it
    unreachable: Optional[str] = None   # why the Debian cloud kernels cannot reach it
    callback: str = ""            # young sites: clear_flush_young, clear_young or test_young
    # young sites: the size of the range the site passes (PTE_SIZE or PMD_SIZE); 0 if it passes both
    size: int = 0

    @property
    def reachable(self) -> bool:
        return self.unreachable is None


@dataclass(frozen=True)
class _Row:
    site: CallSite
    versions: frozenset[tuple[int, int]]
    # (version, why): unreachable on that version only (a config option one kernel lacks)
    unreachable_in: tuple[tuple[tuple[int, int], str], ...] = ()


def _r(file: str, name: str, reach: str, versions: frozenset[tuple[int, int]] = BOTH,
       unreachable: Optional[str] = None) -> _Row:
    return _Row(CallSite(name, file, RANGE, reach, unreachable), versions)


def _y(file: str, name: str, callback: str, reach: str, versions: frozenset[tuple[int, int]] = BOTH,
       unreachable: Optional[str] = None, size: int = 0,
       unreachable_in: tuple[tuple[tuple[int, int], str], ...] = ()) -> _Row:
    return _Row(CallSite(name, file, YOUNG, reach, unreachable, callback, size), versions, unreachable_in)


# One table: every site of 6.1 and 6.12, in the kernel's file order, with the versions that have it.
_TABLE: tuple[_Row, ...] = (
    _r("fs/proc/task_mmu.c", "clear_refs_write", "write 4 (soft-dirty) to /proc/PID/clear_refs"),
    _r("fs/proc/task_mmu.c", "do_pagemap_scan",
       "ioctl(PAGEMAP_SCAN) on /proc/PID/pagemap with PM_SCAN_WP_MATCHING", ONLY_612),
    _r("kernel/events/uprobes.c", "__replace_page",
       "a uprobe placed on (or removed from) the text of a mapped file, through tracefs uprobe_events"),
    _r("mm/huge_memory.c", "__split_huge_pmd",
       "a VMA split inside a 2 MiB block (mprotect, munmap, mremap), or a partial MADV_DONTNEED, COW or "
       "migration of a PMD-mapped THP"),
    _r("mm/huge_memory.c", "__split_huge_pud", "a partial unmap or mprotect of a PUD-mapped DAX file",
       unreachable=DAX_PUD),
    _r("mm/huge_memory.c", "move_pages_huge_pmd", "ioctl(UFFDIO_MOVE) of a PMD-mapped THP", ONLY_612),
    _r("mm/hugetlb.c", "__unmap_hugepage_range", "munmap or MADV_DONTNEED of a hugetlb mapping", ONLY_61),
    _r("mm/hugetlb.c", "unmap_hugepage_range",
       "a COW fault on a private hugetlb page with the pool exhausted: the reservation owner unmaps the "
       "page from its children (unmap_ref_private), in the children's mms", ONLY_612),
    _r("mm/hugetlb.c", "copy_hugetlb_page_range", "fork of a process with a private hugetlb mapping"),
    _r("mm/hugetlb.c", "hugetlb_change_protection", "mprotect of a hugetlb mapping"),
    _r("mm/hugetlb.c", "hugetlb_unshare_pmds",
       "splitting a VMA of a shared hugetlb mapping that spans a 1 GiB-aligned PUD (munmap or mprotect "
       "inside it), or unregistering userfaultfd from one"),
    _r("mm/hugetlb.c", "hugetlb_wp", "a write to a private hugetlb page shared with a child after fork"),
    _r("mm/hugetlb.c", "move_hugetlb_page_tables", "mremap of a hugetlb mapping"),
    _r("mm/khugepaged.c", "collapse_and_free_pmd",
       "MADV_COLLAPSE or khugepaged on a shmem or file range: the page tables of its mappings retracted",
       ONLY_61),
    _r("mm/khugepaged.c", "collapse_huge_page", "MADV_COLLAPSE or khugepaged of an anonymous 2 MiB block"),
    _r("mm/khugepaged.c", "collapse_pte_mapped_thp",
       "MADV_COLLAPSE of a shmem or file range whose huge folio is PTE-mapped in a VMA with an anon_vma",
       ONLY_612),
    _r("mm/khugepaged.c", "retract_page_tables",
       "MADV_COLLAPSE or khugepaged on a shmem or file range: the page tables of its mappings without an "
       "anon_vma retracted", ONLY_612),
    _r("mm/ksm.c", "replace_page", "ksmd merging a page into an existing KSM page"),
    _r("mm/ksm.c", "write_protect_page", "ksmd write-protecting a page it is about to merge"),
    _r("mm/madvise.c", "madvise_free_single_vma", "MADV_FREE on anonymous memory"),
    _r("mm/mapping_dirty_helpers.c", "wp_clean_pre_vma", "vmwgfx's dirty tracking of a buffer object mapping",
       unreachable=VMWGFX),
    _r("mm/memory.c", "copy_page_range", "fork of a process with private anonymous memory (write-protecting it)"),
    _r("mm/memory.c", "remove_device_exclusive_entry", "a CPU fault on a device-exclusive entry",
       unreachable=DEVICE_PRIVATE),
    _r("mm/memory.c", "unmap_vmas", "munmap, a shrinking mremap, exit"),
    _r("mm/memory.c", "wp_page_copy", "a write fault that copies the page: COW after fork, a write to a KSM page"),
    _r("mm/memory.c", "zap_page_range",
       "joining a time namespace (setns: the vDSO's vvar zap), TCP zero-copy receive", ONLY_61),
    _r("mm/memory.c", "zap_page_range_single",
       "MADV_DONTNEED; on 6.12 also the time namespace's vvar zap and TCP zero-copy receive"),
    _r("mm/migrate_device.c", "__migrate_device_pages", "migrate_vma_pages() of device memory",
       unreachable=DEVICE_PRIVATE),
    _r("mm/migrate_device.c", "migrate_vma_collect", "migrate_vma_setup() of device memory",
       unreachable=DEVICE_PRIVATE),
    _r("mm/mprotect.c", "change_pmd_range", "mprotect of anonymous or file memory", ONLY_61),
    _r("mm/mprotect.c", "change_pud_range", "mprotect of anonymous or file memory", ONLY_612),
    _r("mm/mremap.c", "move_page_tables", "mremap that moves a mapping (and exec's stack relocation)"),
    _r("mm/oom_kill.c", "__oom_reap_task_mm", "the OOM reaper on an OOM-killed process"),
    _r("mm/rmap.c", "page_make_device_exclusive_one", "make_device_exclusive_range() of a device driver",
       unreachable=DEVICE_PRIVATE),
    _r("mm/rmap.c", "page_vma_mkclean_one",
       "writeback of a dirty shared file mapping on a block filesystem (msync, fsync, the flusher)"),
    _r("mm/rmap.c", "try_to_migrate_one",
       "page migration: compaction, move_pages/mbind across NUMA nodes, splitting a THP (debugfs "
       "split_huge_pages)"),
    _r("mm/rmap.c", "try_to_unmap_one",
       "reclaim into swap (memory.reclaim, MADV_PAGEOUT), collapsing a shmem or file range"),
    _r("mm/userfaultfd.c", "move_pages_pte", "ioctl(UFFDIO_MOVE) of 4 KiB pages", ONLY_612),

    _y("mm/damon/ops-common.c", "damon_ptep_mkold", "clear_young",
       "DAMON monitoring (vaddr or paddr) making a sampled PTE old", unreachable_in=((V61, NO_DAMON_61),),
       size=PTE_SIZE),
    _y("mm/damon/ops-common.c", "damon_pmdp_mkold", "clear_young",
       "DAMON monitoring making a sampled PMD-mapped THP old", unreachable_in=((V61, NO_DAMON_61),), size=PMD_SIZE),
    _y("mm/damon/paddr.c", "__damon_pa_young", "test_young", "DAMON paddr monitoring checking a sampled page",
       ONLY_61, unreachable=NO_DAMON_61),
    _y("mm/damon/paddr.c", "damon_folio_young_one", "test_young",
       "DAMON paddr monitoring checking a sampled page", ONLY_612),
    _y("mm/damon/vaddr.c", "damon_young_pmd_entry", "test_young",
       "DAMON vaddr monitoring checking a sampled page of the target process",
       unreachable_in=((V61, NO_DAMON_61),)),
    _y("mm/khugepaged.c", "__collapse_huge_page_isolate", "test_young",
       "a collapse (khugepaged or MADV_COLLAPSE) checking the old PTEs of the block it isolates"),
    _y("mm/khugepaged.c", "hpage_collapse_scan_pmd", "test_young",
       "khugepaged (or MADV_COLLAPSE) scanning an anonymous block with old PTEs"),
    _y("mm/page_idle.c", "page_idle_clear_pte_refs_one", "clear_young",
       "writing /sys/kernel/mm/page_idle/bitmap", unreachable=NO_IDLE),
    _y("mm/rmap.c", "folio_referenced_one", "clear_flush_young",
       "reclaim checking a mapped page's references (memory.reclaim or MADV_PAGEOUT with swap); on 6.12 "
       "only with MGLRU off"),
    _y("mm/vmscan.c", "lru_gen_look_around", "clear_young",
       "MGLRU reclaim checking a page's references and its neighbours' (lru_gen enabled)", ONLY_612,
       size=PTE_SIZE),
    _y("mm/vmscan.c", "walk_pmd_range_locked", "clear_young",
       "MGLRU aging walking the page tables of a process with PMD-mapped THPs", ONLY_612, size=PMD_SIZE),
    _y("mm/vmscan.c", "walk_pte_range", "clear_young",
       "MGLRU aging walking the page tables of a process (memory.reclaim with lru_gen enabled)", ONLY_612,
       size=PTE_SIZE),
)

# Per version: site -> the functions it is compiled into on the Debian cloud kernels (its own frame
# is missing from every stack).  Read from /proc/kallsyms of 6.1.0-57-cloud-amd64 and
# 6.12.117+deb12-cloud-amd64, and confirmed by recorded stacks where the site is reachable.
INLINED: Mapping[tuple[int, int], Mapping[str, tuple[str, ...]]] = {
    V61: {
        "change_pmd_range": ("change_protection",),
        "replace_page": ("try_to_merge_one_page",),
        "remove_device_exclusive_entry": ("do_swap_page",),
        "migrate_vma_collect": ("migrate_vma_setup",),
        "__collapse_huge_page_isolate": ("collapse_huge_page",),
    },
    V612: {
        "change_pud_range": ("change_protection",),
        "replace_page": ("try_to_merge_one_page",),
        "wp_page_copy": ("do_wp_page",),
        "madvise_free_single_vma": ("do_madvise",),
        "move_pages_pte": ("move_pages",),
        "remove_device_exclusive_entry": ("do_swap_page",),
        "migrate_vma_collect": ("migrate_vma_setup",),
        "__collapse_huge_page_isolate": ("collapse_huge_page",),
        "walk_pte_range": ("walk_pud_range",),
        # walk_pmd_range_locked has an out-of-line copy on 6.12, but its caller is walk_pud_range's
        # inlined walk_pmd_range: whether a call was inlined is not visible in kallsyms.
        "walk_pmd_range_locked": ("walk_pud_range",),
    },
}

# Frames of the notifier core and of the tracing machinery above the site's frame: skipped.
_CORE_FRAMES = frozenset(ENTRY_POINTS) | {
    "__mmu_notifier_invalidate_range_end", "__mmu_notifier_invalidate_range", "__mmu_notifier_change_pte",
    "__mmu_notifier_arch_invalidate_secondary_tlbs", "mn_hlist_invalidate_range_start", "mn_itree_invalidate",
    "mn_hlist_clear_flush_young", "mn_hlist_clear_young", "mn_hlist_test_young",
}
_TRACING_PREFIXES = ("kprobe_", "trace_", "ftrace_", "__ftrace_", "__trace_", "event_trigger", "stack_trace_",
                     "arch_stack_walk", "rethook_", "fprobe_", "kretprobe_", "perf_")
# A compiler-made copy of a function: foo.constprop.0, foo.isra.0, foo.part.0, foo.cold, foo.llvm.123
_SUFFIX = re.compile(r"(\.(constprop|isra|part|cold|llvm|lto_priv|localalias)(\.\d+)?)+$")
_OFFSET = re.compile(r"\+0x[0-9a-fA-F]+(/0x[0-9a-fA-F]+)?(\s+\[[\w-]+\])?$")


@dataclass(frozen=True)
class SiteTable:
    version: tuple[int, int]          # the version asked for
    table_version: tuple[int, int]    # the version whose source the table was read from
    sites: tuple[CallSite, ...]
    inlined: Mapping[str, tuple[str, ...]]
    verified: bool

    @property
    def label(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    def site(self, name: str) -> Optional[CallSite]:
        return next((s for s in self.sites if s.name == name), None)

    def of_kind(self, kind: str) -> tuple[CallSite, ...]:
        return tuple(s for s in self.sites if s.kind == kind)

    def hosted_by(self, frame: str, kind: str) -> tuple[CallSite, ...]:
        """The sites of `kind` whose code a frame of `frame` runs: its own, and those inlined into it."""
        out = [s for s in self.sites if s.kind == kind and s.name == frame]
        out += [s for s in self.sites
                if s.kind == kind and frame in self.inlined.get(s.name, ()) and s not in out]
        return tuple(out)


def table_version(version: tuple[int, int]) -> tuple[int, int]:
    """The read version whose table stands for `version`: the newest one not after it (6.1 before 6.1)."""
    return V612 if version >= V612 else V61


def sites_for(version: tuple[int, int]) -> SiteTable:
    tv = table_version(version)
    sites = []
    for row in _TABLE:
        if tv not in row.versions:
            continue
        site = row.site
        why = dict(row.unreachable_in).get(tv)
        if why and site.unreachable is None:
            site = replace(site, unreachable=why)
        sites.append(site)
    return SiteTable(version=version, table_version=tv, sites=tuple(sites), inlined=INLINED[tv],
                     verified=version in VERIFIED)


def frame_name(frame: str) -> str:
    """A stack frame as ftrace prints it, down to the function's name: `foo+0x1a/0x80 [mod]` and
    compiler suffixes (`.isra.0`, `.constprop.0`, `.cold`) dropped."""
    name = _OFFSET.sub("", frame.strip())
    return _SUFFIX.sub("", name)


def _is_tracing(frame: str) -> bool:
    return frame.startswith(_TRACING_PREFIXES) or frame.startswith("0x") or not frame


@dataclass(frozen=True)
class Resolution:
    """What a stack says: the site, or why it names none."""

    site: Optional[CallSite]
    frame: str                         # the first frame below the notifier core ("" if none)
    entry: str                         # the notifier entry point the stack went through ("" if unseen)
    candidates: tuple[CallSite, ...] = ()  # more than one: ambiguous
    problem: str = ""                  # why site is None

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1


def resolve_frames(frames: Sequence[str], version: tuple[int, int], *, entry: Optional[str] = None,
                   size: Optional[int] = None) -> Resolution:
    """Resolve a stack (innermost frame first) to its call site.

    `entry` is the notifier entry point the kprobe was on; without it the stack's own entry frame
    decides.  `size`: the window's end - start, which tells a PTE site from a PMD site of the same
    host frame.
    """
    return _resolve(sites_for(version), frames, entry, size)


def resolve(frames: Sequence[str], version: tuple[int, int], *, entry: Optional[str] = None,
            size: Optional[int] = None) -> Optional[CallSite]:
    """The call site a stack (innermost frame first, offsets stripped or not) shows, or None when it
    shows none of the version's sites or could be more than one (resolve_frames says which)."""
    return resolve_frames(frames, version, entry=entry, size=size).site


def _resolve(table: SiteTable, frames: Sequence[str], entry: Optional[str], size: Optional[int]) -> Resolution:
    names = [frame_name(f) for f in frames]
    seen_entry = ""
    i = 0
    # Above the entry point: the tracer's own frames (kprobe handler, ftrace trampoline).
    at = next((k for k, n in enumerate(names) if n in ENTRY_POINTS), None)
    if at is not None:
        seen_entry = names[at]
        i = at
    else:
        while i < len(names) and _is_tracing(names[i]):
            i += 1
    while i < len(names) and (names[i] in _CORE_FRAMES or _is_tracing(names[i])):
        i += 1
    entry = entry or seen_entry
    if entry and entry not in ENTRY_POINTS:
        return Resolution(None, "", entry, problem=f"{entry} is not a notifier entry point")
    if seen_entry and entry != seen_entry:
        return Resolution(None, "", entry, problem=f"the stack went through {seen_entry}, not {entry}")
    if i >= len(names):
        return Resolution(None, "", entry, problem="no frame below the notifier core")
    frame = names[i]
    if not entry:
        return Resolution(None, frame, "", problem="no notifier entry point in the stack or given")
    kind = ENTRY_POINTS[entry]
    candidates = table.hosted_by(frame, kind)
    if kind == YOUNG:
        callback = YOUNG_CALLBACK[entry]
        candidates = tuple(s for s in candidates if s.callback == callback)
        if len(candidates) > 1 and size is not None:
            sized = tuple(s for s in candidates if s.size in (0, size))
            candidates = sized or candidates
    if not candidates:
        return Resolution(None, frame, entry, problem=f"{frame} is none of {table.label}'s {kind} sites")
    if len(candidates) > 1:
        names_ = " or ".join(s.name for s in candidates)
        return Resolution(None, frame, entry, candidates,
                          problem=f"ambiguous: {frame} hosts {names_}")
    return Resolution(candidates[0], frame, entry, candidates)


# Sites whose windows (or young callbacks) a per-operation rule of the model judges today, and the
# scenarios that run those operations (harness/model/expect.py's _EXPECT, harness/model/reaper.py).
# A site reached only by other scenarios is checked by the notifier contract alone.
JUDGED_BY: dict[str, tuple[str, ...]] = {
    # expect_dontneed: the CLEAR per VMA, and a partly covered THP's nested split
    "zap_page_range_single": ("mm-basic", "thp-split"),
    # expect_mprotect/expect_munmap's VMA splits, expect_dontneed's nested split, expect_split's
    # split_huge_pmd_address, expect_cow's write to a PMD-mapped THP
    "__split_huge_pmd": ("mm-basic", "thp-split", "cow"),
    # expect_mprotect: PROTECTION_VMA per chunk
    "change_pmd_range": ("mm-basic", "thp-split"),
    "change_pud_range": ("mm-basic", "thp-split"),
    # expect_munmap: UNMAP of exactly the range
    "unmap_vmas": ("mm-basic", "thp-split"),
    # expect_split: try_to_migrate_one's CLEAR per VMA
    "try_to_migrate_one": ("thp-split",),
    # expect_cow: PROTECTION_PAGE per private VMA
    "copy_page_range": ("cow",),
    # expect_cow's COW CLEAR; expect_write/expect_unmerge: breaking a KSM page
    "wp_page_copy": ("cow", "ksm"),
    # expect_ksm: a CLEAR per merged page from each
    "write_protect_page": ("ksm",),
    "replace_page": ("ksm",),
    # expect_khugepaged: the collapse's 2 MiB CLEAR, and test_young for exactly the old PTEs
    "collapse_huge_page": ("aging",),
    "hpage_collapse_scan_pmd": ("aging",),
    "__collapse_huge_page_isolate": ("aging",),
    # expect_reclaim: a 4 KiB CLEAR per swapped page, after the page's young callback
    "try_to_unmap_one": ("aging",),
    "folio_referenced_one": ("aging",),
    "lru_gen_look_around": ("aging",),
    "walk_pte_range": ("aging",),
    "walk_pmd_range_locked": ("aging",),
    # reaper.judge_reaper: a non-blockable UNMAP per reapable VMA
    "__oom_reap_task_mm": ("memcg-oom", "memcg-oom-nonblock-fail"),
}


def register_judged(site: str, *scenarios: str) -> None:
    """Scenarios of an operation family (harness/model/families/) whose per-operation rules judge `site`."""
    JUDGED_BY[site] = (*JUDGED_BY.get(site, ()), *(s for s in scenarios if s not in JUDGED_BY.get(site, ())))
