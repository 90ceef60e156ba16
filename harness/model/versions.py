"""What each kernel version has, in one place.

Thresholds are from kernel-semantics.md §0 (6.1 and 6.12 read from source;
6.5, 6.9 and 6.10 used only to date the changes).  A version outside the
range that was read is still answered, by the same thresholds, but
`verified` is False and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
P4D_SIZE = 1 << 39   # x86-64 4-level paging: one P4D entry maps 512 GiB

VERIFIED = {(6, 1), (6, 12)}


@dataclass(frozen=True)
class Features:
    version: tuple[int, int]
    # ops->change_pte exists and KSM/COW call it through set_pte_at_notify (removed in 6.10).
    change_pte: bool
    # ops->invalidate_range exists (renamed arch_invalidate_secondary_tlbs in 6.6).
    invalidate_range: bool
    # ops->arch_invalidate_secondary_tlbs exists (6.6+); cannot be combined with start/end.
    arch_invalidate: bool
    # mprotect's PROTECTION_VMA: one pair per chunk of this size ...
    mprotect_chunk: int
    # ... started at the first populated "pmd" (6.1 change_pmd_range) or non-none "pud" (6.12 change_pud_range).
    mprotect_level: str
    # MGLRU aging calls clear_young (ptep_clear_young_notify); 6.1 walks without notifiers.
    mglru_clear_young: bool
    # KVM traces kvm_set_spte_hva from change_pte (gone with change_pte).
    kvm_set_spte_hva: bool
    # ext4_punch_hole writes the range back first when the file has dirty pages (6.1); 6.12's
    # (ext4_truncate_page_cache_block_range) does only with data=journal.
    ext4_punch_writeback: bool
    # __unmap_hugepage_range opens an UNMAP window of its own, nested in munmap's and MADV_DONTNEED's
    # (6.1); on 6.12 the callers widen their own window (hugetlb_zap_begin) and it opens none.
    hugetlb_nested_unmap: bool
    # move_page_tables moves from the PMD boundary below an unaligned start when source and
    # destination are mutually aligned and nothing is mapped below either (try_realign_addr, 6.12):
    # its UNMAP window then starts at that boundary; 6.1 opens it at the start.
    mremap_realign: bool
    # MADV_PAGEOUT makes young PTEs old with no callback and its reclaim checks each page's references
    # (clear_flush_young, 6.1); 6.12 leaves the PTEs as they are and ignores references: no young callback.
    pageout_checks_references: bool
    # __replace_page's CLEAR window covers the probed page (6.8: "uprobes: use pagesize-aligned
    # virtual address when replacing pages"); before, [probed address, +4 KiB), unaligned in general.
    uprobe_page_aligned: bool
    # A shmem or file collapse retracts the page tables of every mapping of the file without an
    # anon_vma, each in a window of retract_page_tables, and collapse_pte_mapped_thp opens its own
    # window (6.12); 6.1 retracts only the caller's mapping (khugepaged: every one it can lock), and
    # both retract through collapse_and_free_pmd.
    collapse_retracts_all: bool
    # ioctl(PAGEMAP_SCAN) on /proc/PID/pagemap (6.7).
    pagemap_scan: bool
    # userfaultfd's UFFDIO_MOVE (6.8).
    uffd_move: bool
    verified: bool

    @property
    def label(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"


# The version thresholds the table rests on: (what, the first version with the newer behaviour,
# where the date comes from).  Between and beyond the verified versions they are extrapolations.
THRESHOLDS: tuple[tuple[str, tuple[int, int], str], ...] = (
    ("arch_invalidate_secondary_tlbs instead of invalidate_range", (6, 6), "the rename, dated from 6.5 and 6.6"),
    ("no change_pte (and no kvm_set_spte_hva)", (6, 10), "the removal, dated from 6.9 and 6.10"),
    ("mprotect's PROTECTION_VMA per P4D from the first non-none PUD", (6, 10), "change_pud_range, dated from 6.10"),
    ("MGLRU's look-around calls clear_young", (6, 12), "seen in 6.12, not dated between 6.1 and 6.12"),
    ("mremap's window realigned down to the PMD boundary", (6, 12), "seen in 6.12, not dated between 6.1 and 6.12"),
    ("MADV_PAGEOUT ignores references", (6, 12), "seen in 6.12, not dated between 6.1 and 6.12"),
    ("__replace_page's window on the probed page", (6, 8), "the fix's release, not read in 6.8"),
    ("a file collapse retracts every mapping, collapse_pte_mapped_thp notifies itself", (6, 6),
     "the release of the retract_page_tables rework, not read in 6.6"),
    ("PAGEMAP_SCAN", (6, 7), "the ioctl's release, not read in 6.7"),
    ("UFFDIO_MOVE", (6, 8), "the ioctl's release, not read in 6.8"),
)


def verified_label() -> str:
    return ", ".join(f"{v[0]}.{v[1]}" for v in sorted(VERIFIED))


def extrapolated(f: Features) -> list[str]:
    """For a version the model was not read from: each threshold it was judged by, and which side of it
    the version was put on."""
    if f.verified:
        return []
    return [f"{what}: {'assumed' if f.version >= since else 'not assumed'} (from {since[0]}.{since[1]}; {source})"
            for what, since, source in THRESHOLDS]


def features_for(version: tuple[int, int]) -> Features:
    return Features(
        version=version,
        change_pte=version < (6, 10),
        invalidate_range=version < (6, 6),
        arch_invalidate=version >= (6, 6),
        mprotect_chunk=GIB if version < (6, 10) else P4D_SIZE,
        mprotect_level="pmd" if version < (6, 10) else "pud",
        # Seen in 6.12's source; when it arrived between 6.1 and 6.12 was not dated.
        mglru_clear_young=version >= (6, 12),
        kvm_set_spte_hva=version < (6, 10),
        # Both seen in 6.1's and 6.12's source; when they changed in between was not dated.
        ext4_punch_writeback=version < (6, 12),
        hugetlb_nested_unmap=version < (6, 12),
        # Both seen in 6.12's source and not in 6.1's; when they arrived in between was not dated.
        mremap_realign=version >= (6, 12),
        pageout_checks_references=version < (6, 12),
        # Read in 6.1 and 6.12; dated by the releases that brought them, not read there.
        uprobe_page_aligned=version >= (6, 8),
        collapse_retracts_all=version >= (6, 6),
        pagemap_scan=version >= (6, 7),
        uffd_move=version >= (6, 8),
        verified=version in VERIFIED,
    )
