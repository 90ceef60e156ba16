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
        verified=version in VERIFIED,
    )
