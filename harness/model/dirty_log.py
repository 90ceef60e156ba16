"""KVM's dirty log for one memory slot, from kernel-semantics.md §5 (identical in 6.1 and 6.12).

Pure: the model is told each operation and the kernel's answer, and says what
is wrong with the answer.  It keeps two page sets per slot:

- `must`: bits the kernel has to report: the L2 wrote the page (or INITIALLY_SET
  filled the bitmap) and nothing has cleared the bit since;
- `may`: bits the kernel is allowed to report: `must`, plus pages the L2 read
  while logging was on, because a read fault on a page whose host PTE is
  writable installs a writable SPTE and `make_spte` marks it dirty (§5 (b)).

A GET checks must ⊆ bitmap ⊆ may and then knows the bitmap exactly.  Memory
contents are exact: a write sets the page's first word, MADV_DONTNEED zeroes it.
"""

from __future__ import annotations

import errno as E
from dataclasses import dataclass, field
from typing import Iterable, Optional

LOG_DIRTY_PAGES = 1            # KVM_MEM_LOG_DIRTY_PAGES
MANUAL_PROTECT_ENABLE = 1      # KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
INITIALLY_SET = 2              # KVM_DIRTY_LOG_INITIALLY_SET
MANUAL_CAPS = MANUAL_PROTECT_ENABLE | INITIALLY_SET   # KVM_DIRTY_LOG_MANUAL_CAPS on x86
USER_MEM_SLOTS = 32764         # x86 KVM_USER_MEM_SLOTS (KVM_MAX_NR_USER_MEMSLOTS) in 6.1 and 6.12
ADDRESS_SPACES = 2             # x86: normal and SMM
WORD = 64                      # BITS_PER_LONG: the bitmap's and CLEAR's granularity


def pages_of(bits: int) -> list[int]:
    """The set bits of a bitmap, lowest first."""
    out = []
    while bits:
        low = bits & -bits
        out.append(low.bit_length() - 1)
        bits ^= low
    return out


def describe(bits: int, limit: int = 12) -> str:
    pages = pages_of(bits)
    text = ", ".join(str(p) for p in pages[:limit])
    return f"{{{text}{', ...' if len(pages) > limit else ''}}} ({len(pages)} pages)"


def bitmap_bytes(npages: int) -> int:
    """What GET copies out: ALIGN(npages, 64) / 8."""
    return (npages + WORD - 1) // WORD * WORD // 8


def errno_name(code: int) -> str:
    return E.errorcode.get(code, str(code)) if code else "0"


@dataclass
class DirtyLogModel:
    """The VM's test slot (id `slot`, `npages` pages) and the capability value."""

    npages: int
    slot: int = 1
    flags: int = LOG_DIRTY_PAGES
    cap: int = 0                       # kvm->manual_dirty_log_protect
    must: int = 0
    may: int = 0
    memory: dict[int, int] = field(default_factory=dict)   # page -> first word; absent = 0

    @classmethod
    def created(cls, npages: int, flags: int, cap: Optional[int], slot: int = 1) -> "DirtyLogModel":
        """The VM after minivmm's create: the cap (if given) is enabled before the slot exists."""
        model = cls(npages=npages, slot=slot, flags=0)
        if cap is not None and model.enable_cap_errno(cap, 0) == 0:
            model.cap = cap
        model.set_flags(flags)
        return model

    # --- state ----------------------------------------------------------------

    @property
    def logging(self) -> bool:
        return bool(self.flags & LOG_DIRTY_PAGES)

    @property
    def manual(self) -> bool:
        return bool(self.cap & MANUAL_PROTECT_ENABLE)

    @property
    def all_pages(self) -> int:
        return (1 << self.npages) - 1

    # --- operations: each returns the errno the kernel must give, then updates the state ----

    @staticmethod
    def enable_cap_errno(value: int, flags: int) -> int:
        """kvm_vm_ioctl_enable_cap_generic: without bit 0 only 0 is valid; with it, MANUAL_CAPS."""
        allowed = MANUAL_CAPS if value & MANUAL_PROTECT_ENABLE else MANUAL_PROTECT_ENABLE
        if flags or value & ~allowed or value < 0:
            return E.EINVAL
        return 0

    def enable_cap(self, value: int, flags: int = 0) -> int:
        err = self.enable_cap_errno(value, flags)
        if not err:
            self.cap = value
        return err

    def set_flags(self, flags: int) -> int:
        """A flags-only KVM_SET_USER_MEMORY_REGION: the bitmap goes with the flag, and a newly
        allocated one is all ones when INITIALLY_SET is on (kvm_prepare_memory_region)."""
        if flags & ~LOG_DIRTY_PAGES:
            raise ValueError("the model only toggles KVM_MEM_LOG_DIRTY_PAGES")
        newly = flags & LOG_DIRTY_PAGES and not self.logging
        self.flags = flags
        if not self.logging:
            self.must = self.may = 0
        elif newly:
            self.must = self.may = self.all_pages if self.manual and self.cap & INITIALLY_SET else 0
        return 0

    def write(self, pages: Iterable[int], value: int, index: bool = False) -> None:
        for p in pages:
            self.memory[p] = (value + p if index else value) & 0xFFFFFFFF
            if self.logging:
                self.must |= 1 << p
                self.may |= 1 << p

    def read(self, pages: Iterable[int]) -> list[int]:
        """The values the L2 must read; the read may mark the pages dirty."""
        pages = list(pages)
        if self.logging:
            for p in pages:
                self.may |= 1 << p
        return [self.memory.get(p, 0) for p in pages]

    def dontneed(self, first_page: int, count: int) -> None:
        """MADV_DONTNEED: anonymous memory reads zero again.  KVM's zap marks nothing dirty."""
        for p in range(first_page, first_page + count):
            self.memory.pop(p, None)

    @staticmethod
    def _slot_id_errno(slot: int) -> int:
        """`as_id >= KVM_ADDRESS_SPACE_NUM || id >= KVM_USER_MEM_SLOTS`: EINVAL."""
        as_id, ident = slot >> 16, slot & 0xFFFF
        return E.EINVAL if as_id >= ADDRESS_SPACES or ident >= USER_MEM_SLOTS else 0

    def _bitmap_errno(self, slot: int) -> int:
        """No such slot, or a slot without a dirty bitmap: ENOENT."""
        return 0 if slot == self.slot and self.logging else E.ENOENT

    def get_errno(self, slot: int) -> int:
        """kvm_get_dirty_log_protect's checks, in the kernel's order (the ring is never enabled)."""
        return self._slot_id_errno(slot) or self._bitmap_errno(slot)

    def get(self, bitmap: int) -> list[str]:
        """Judge a successful GET's bitmap, then apply it: manual protect leaves the bitmap as it
        is; legacy GET harvests it (xchg with 0) and re-protects."""
        problems = []
        missing = self.must & ~bitmap
        extra = bitmap & ~self.may
        if missing:
            problems.append(f"bits that must be set (the L2 wrote the page, or INITIALLY_SET) are clear: "
                            f"pages {describe(missing)}")
        if extra:
            beyond = extra & ~self.all_pages
            inside = extra & self.all_pages
            if inside:
                problems.append(f"bits set for pages neither written nor read since their bit was cleared: "
                                f"pages {describe(inside)}")
            if beyond:
                problems.append(f"bits set beyond the slot's {self.npages} pages: {describe(beyond)}")
        if self.manual:
            self.must = self.may = bitmap & self.all_pages
        else:
            self.must = self.may = 0
        return problems

    def clear_errno(self, slot: int, first: int, num: int) -> int:
        """kvm_clear_dirty_log_protect's checks, in the kernel's order: the slot id, then first_page
        alignment (before the slot lookup, so a missing slot with a misaligned first page gives
        EINVAL), then the slot and its bitmap, then the range against the slot's size."""
        n = self.npages
        return (self._slot_id_errno(slot) or (E.EINVAL if first & (WORD - 1) else 0)
                or self._bitmap_errno(slot)
                or (E.EINVAL if first > n or num > n - first or (num < n - first and num & (WORD - 1)) else 0))

    def clear(self, first: int, num: int, bitmap: int) -> None:
        """Clear what was both requested and set; requested bits past num_pages' last word or past
        the slot end name no page and are ignored.  The ioctl does not need manual protect."""
        words = (num + WORD - 1) // WORD
        requested = (bitmap & ((1 << (words * WORD)) - 1)) << first
        self.must &= ~requested
        self.may &= ~requested


def expected_values_problem(pages: list[int], expected: list[int], got: list[int]) -> Optional[str]:
    """The first few pages where the L2 read something other than the model's value."""
    if len(got) != len(expected):
        return f"the L2 returned {len(got)} values for {len(expected)} pages"
    wrong = [(p, e, g) for p, e, g in zip(pages, expected, got) if e != g]
    if not wrong:
        return None
    shown = ", ".join(f"page {p}: read {g:#x}, expected {e:#x}" for p, e, g in wrong[:6])
    return f"the L2 read wrong data on {len(wrong)} of {len(pages)} pages: {shown}"
