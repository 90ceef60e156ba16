"""The workload's operations, typed, and the address space they shape.

`mmops` prints one JSON line per operation; `parse_ops` types them.  The
AddressSpace follows the VMAs and 2 MiB blocks of the workload's own
mappings as each operation changes them, which is what the expectations of
the next operation depend on (a split at an unaligned address inside a VMA,
a block still PMD-mapped, a large folio not yet split).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Sequence

from harness.errors import HarnessError
from harness.guest_data import PID_MAX, U64_MAX, GuestDataError, int_field
from harness.guest_data import field as guest_field

PAGE = 4096
HPAGE = 2 << 20
NEVER = 2**63 - 1
# x86-64's user address space with 4-level page tables: no mapping of mmops's ends above it.
USER_ADDR_LIMIT = 1 << 47
# ... and with 5-level paging (LA57, which a tree's defconfig enables): the stack may be up here.
USER_ADDR_LIMIT_5LEVEL = 1 << 56
# The largest range an operation may cover unless the caller knows better (the guest's memory).
MAX_RANGE = 1 << 40
# The operations on a mapping: each names its [start, end).
RANGED = frozenset({"map", "dontneed", "mprotect", "munmap", "touch", "split", "cold", "cow", "fill", "write",
                    "verify", "ksm", "unmerge", "oom", "khugepaged", "reclaim"})


@dataclass(frozen=True)
class FamilyOp:
    """An operation of a family beyond mmops.c's own (guest/workloads/mmops-*.c, modelled in
    harness/model/families/): its integer fields and whether it names a [start, end) range."""

    ints: tuple[str, ...] = ()
    ranged: bool = True


FAMILY_OPS: dict[str, FamilyOp] = {}


def register_op(kind: str, ints: tuple[str, ...] = (), ranged: bool = True) -> None:
    """Declare a family's operation to the parser (at import of its family module)."""
    if kind in FAMILY_OPS or kind in RANGED:
        raise ValueError(f"operation {kind!r} is declared twice")
    FAMILY_OPS[kind] = FamilyOp(ints, ranged)


class ModelError(HarnessError):
    """The operations ask for something the model does not encode; it says so instead of guessing."""


def block(addr: int) -> tuple[int, int]:
    start = addr & ~(HPAGE - 1)
    return start, start + HPAGE


@dataclass(frozen=True)
class VmaInfo:
    """A VMA as /proc/self/smaps showed it (for the OOM reaper's choices)."""

    start: int
    end: int
    perms: str
    flags: frozenset[str]

    @property
    def reapable(self) -> bool:
        """__oom_reap_task_mm: skip VM_HUGETLB|VM_PFNMAP; reap anonymous or private (not VM_SHARED).  The
        [vsyscall] page smaps lists above user space (CONFIG_X86_VSYSCALL_EMULATION) is the gate area, no
        VMA of the mm: the reaper never sees it."""
        return (not ({"ht", "pf"} & self.flags) and "sh" not in self.flags
                and self.end <= USER_ADDR_LIMIT_5LEVEL)


@dataclass(frozen=True)
class Op:
    """One line of mmops output."""

    kind: str                        # map, dontneed, mprotect, munmap, split, touch, cow, loop, cpu, exit, ...
    t0: int
    t1: int
    name: str = ""
    start: int = 0
    end: int = 0
    prot: str = ""
    thp: bool = False
    anon_huge_kb: int = -1
    child: int = 0
    t_fork: int = 0
    t_write: int = 0
    private_vmas: tuple[tuple[int, int], ...] = ()
    value: int = 0                   # fill, write
    bad_pages: int = 0               # verify (and fill/write: 0)
    ksmd_pid: int = 0                # ksm
    reaper_pid: int = 0              # oom: the oom_reaper kernel thread
    merging_pages: int = -1          # ksm, unmerge: /proc/<pid>/ksm_merging_pages
    full_scans: int = 0              # ksm
    full_scans_before: int = 0
    vmas: tuple[VmaInfo, ...] = ()   # oom: the VMAs before the allocation, and the allocation; reclaim: all
    khugepaged_pid: int = 0          # khugepaged
    collapse_alloc: int = 0          # khugepaged: /proc/vmstat thp_collapse_alloc delta
    collapse_alloc_failed: int = 0   # khugepaged: thp_collapse_alloc_failed delta
    lru_gen: int = -1                # reclaim: /sys/kernel/mm/lru_gen/enabled (-1: no MGLRU)
    errno: int = 0                   # reclaim: the write to memory.reclaim (EAGAIN: reclaimed less)
    swap_kb: int = -1                # reclaim: Swap of the mapping afterwards
    cpu: int = -1                    # cpu: the CPU the workload is pinned to from now on
    # An operation family's own integer fields (harness/model/families/), by name.
    extra: Mapping[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.end:
            return self.kind
        prot = f" {self.prot}" if self.prot else ""
        return f"{self.kind} {self.name} [{self.start:#x}, {self.end:#x}){prot}"


def parse_ops(lines: Sequence[Mapping[str, Any]], *, max_range: int = MAX_RANGE,
              source: str = "mmops") -> tuple[int, list[Op]]:
    """(workload pid, operations) from mmops's JSON lines; an error line raises ModelError, a line
    that is not what mmops prints GuestDataError naming `source`.  No operation may cover more
    than `max_range` bytes: the model walks ranges page by page."""
    pid, ops = 0, []
    vmas: tuple[tuple[int, int], ...] = ()
    smaps: tuple[VmaInfo, ...] = ()
    for line in lines:
        kind = guest_field(line, "op", str, source)
        if "error" in line:
            raise ModelError(f"workload operation {kind[:40]} failed: {guest_field(line, 'error', str, source)[:300]}")
        if kind == "start":
            pid = int_field(line, "pid", source, lo=1, hi=PID_MAX)
        elif kind == "cow-vmas":
            vmas = tuple(_vma_range(v, source) for v in guest_field(line, "private_vmas", list, source))
        elif kind == "vmas":
            smaps = tuple(sorted((_vma_info(v, source) for v in guest_field(line, "vmas", list, source)),
                                 key=lambda v: v.start))
        elif kind != "probe-stats":
            ops.append(_op(line, kind, source, max_range, vmas if kind == "cow" else (),
                           smaps if kind in ("oom", "reclaim") else ()))
    if not pid:
        raise GuestDataError(source, "the workload printed no start line")
    return pid, ops


def _op(line: Mapping[str, Any], kind: str, source: str, max_range: int,
        private_vmas: tuple[tuple[int, int], ...], vmas: tuple[VmaInfo, ...]) -> Op:
    def num(key: str, default: int, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
        return int_field(line, key, source, default, lo=lo, hi=hi)

    t0 = int_field(line, "t0", source, lo=0, hi=U64_MAX)
    if kind in ("exit", "oom"):
        # exit is an instant; the oom operation never returns: the task is killed inside it.
        t1 = num("t1", t0 if kind == "exit" else NEVER, lo=t0, hi=U64_MAX)
    else:
        t1 = int_field(line, "t1", source, lo=t0, hi=U64_MAX)
    start, end = _op_range(line, kind, source, max_range)
    family = FAMILY_OPS.get(kind)
    extra = {k: int_field(line, k, source, lo=-(1 << 63), hi=U64_MAX) for k in family.ints} if family else {}
    return Op(kind=kind, t0=t0, t1=t1, name=guest_field(line, "name", str, source, ""), start=start, end=end,
              prot=guest_field(line, "prot", str, source, ""), thp=guest_field(line, "thp", bool, source, False),
              anon_huge_kb=num("anon_huge_kb", -1), child=num("child", 0, lo=0, hi=PID_MAX),
              t_fork=num("t_fork", 0, lo=0, hi=U64_MAX), t_write=num("t_write", 0, lo=0, hi=U64_MAX),
              private_vmas=private_vmas, value=num("value", 0), bad_pages=num("bad_pages", 0),
              ksmd_pid=num("ksmd_pid", 0, lo=0, hi=PID_MAX), reaper_pid=num("reaper_pid", 0, lo=0, hi=PID_MAX),
              merging_pages=num("merging_pages", -1), full_scans=num("full_scans", 0),
              full_scans_before=num("full_scans_before", 0), vmas=vmas,
              khugepaged_pid=num("khugepaged_pid", 0, lo=0, hi=PID_MAX), collapse_alloc=num("collapse_alloc", 0),
              collapse_alloc_failed=num("collapse_alloc_failed", 0), lru_gen=num("lru_gen", -1),
              errno=num("errno", 0), swap_kb=num("swap_kb", -1), cpu=num("cpu", -1), extra=extra)


def _op_range(line: Mapping[str, Any], kind: str, source: str, max_range: int) -> tuple[int, int]:
    """An operation's [start, end): required of the operations on a mapping, a user address range
    no larger than `max_range`; (0, 0) for the others."""
    family = FAMILY_OPS.get(kind)
    ranged = kind in RANGED or (family is not None and family.ranged)
    if not ranged and "start" not in line and "end" not in line:
        return 0, 0
    start = int_field(line, "start", source, lo=0, hi=USER_ADDR_LIMIT)
    end = int_field(line, "end", source, lo=0, hi=USER_ADDR_LIMIT)
    if not start < end:
        raise GuestDataError(source, f"{kind}: an empty or reversed range [{start:#x}, {end:#x})")
    if end - start > max_range:
        raise GuestDataError(source, f"{kind}: a range of {end - start:#x} bytes, more than the {max_range:#x} "
                                     f"a workload can cover")
    return start, end


def _vma_range(value: object, source: str) -> tuple[int, int]:
    """A [start, end] pair of mmops's private VMA list; anywhere in the 64-bit space ([vsyscall] is
    above user space), but not empty."""
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= U64_MAX for x in value)
            or not value[0] < value[1]):
        raise GuestDataError(source, "a private VMA is not a [start, end] pair of addresses", value)
    return value[0], value[1]


def _vma_info(v: object, source: str) -> VmaInfo:
    """One VMA of mmops's smaps list."""
    if not isinstance(v, dict):
        raise GuestDataError(source, "a VMA is not a JSON object", v)
    start = int_field(v, "start", source, lo=0, hi=U64_MAX)
    end = int_field(v, "end", source, lo=0, hi=U64_MAX)
    if not start < end:
        raise GuestDataError(source, f"an empty or reversed VMA [{start:#x}, {end:#x})")
    flags = guest_field(v, "flags", str, source)
    return VmaInfo(start, end, guest_field(v, "perms", str, source), frozenset(flags.split()))


@dataclass(frozen=True)
class Vma:
    start: int
    end: int
    prot: str          # "rw", "r", "none"
    thp: bool          # MADV_HUGEPAGE (else MADV_NOHUGEPAGE)


@dataclass
class Block:
    """One 2 MiB block of a THP mapping."""

    pmd_mapped: bool = True      # mapped by one huge PMD
    large_folio: bool = True     # backed by one 2 MiB folio (PMD- or PTE-mapped)
    present: bool = True         # anything mapped at all


@dataclass
class AddressSpace:
    """The workload's own mappings: VMAs, populated page tables, THP blocks."""

    vmas: list[Vma] = field(default_factory=list)
    blocks: dict[int, Block] = field(default_factory=dict)     # THP blocks by start
    populated_pmds: set[int] = field(default_factory=set)      # 2 MiB blocks with a non-none PMD
    ksm_pages: set[int] = field(default_factory=set)           # pages mapping a KSM page (read-only)
    # Pages whose PTE has the accessed bit: the CPU sets it on every access (map, touch, fill, write,
    # verify); MADV_COLD clears it without a callback.  khugepaged asks test_young only of old PTEs.
    young: set[int] = field(default_factory=set)
    # The CPU the workload is pinned to (the cpu operation), None while it may migrate, and the CPUs
    # it touched memory on.  A page it faults waits in that CPU's lru_add batch, off the LRU, until
    # the batch is drained: MADV_COLD needs to know where that was.
    cpu: Optional[int] = None
    access_cpus: set[Optional[int]] = field(default_factory=set)
    # The operation families' own state (their file mappings, lazily freed pages, ...) by family
    # name, made on first use (families._common.family_state); mmops.c's rules never read it.
    families: dict[str, Any] = field(default_factory=dict)

    def access(self, start: int, end: int) -> None:
        self.young.update(range(start, end, PAGE))
        self.access_cpus.add(self.cpu)

    def make_old(self, start: int, end: int) -> None:
        self.young.difference_update(range(start, end, PAGE))

    def vma_at(self, addr: int) -> Optional[Vma]:
        return next((v for v in self.vmas if v.start <= addr < v.end), None)

    def overlapping(self, start: int, end: int) -> list[Vma]:
        return [v for v in self.vmas if v.start < end and start < v.end]

    def owns(self, start: int, end: int) -> bool:
        return any(v.start <= start and end <= v.end for v in self.vmas)

    def map(self, op: Op) -> None:
        # A 2 MiB-aligned start keeps vm_start out of vma_adjust_trans_huge's
        # checks; an unaligned end is harmless (its block is never inside the VMA).
        if op.start % HPAGE:
            raise ModelError("mmops maps at 2 MiB-aligned addresses; the model assumes it")
        self.vmas.append(Vma(op.start, op.end, "rw", op.thp))
        self.vmas.sort(key=lambda v: v.start)
        self.access(op.start, op.end)
        for b in range(op.start, op.end, HPAGE):
            self.populated_pmds.add(b)
            if op.thp and b + HPAGE <= op.end:
                self.blocks[b] = Block()     # only whole blocks can be PMD-mapped

    def split_at(self, addr: int) -> Optional[tuple[int, int]]:
        """Split the VMA containing addr there; the 2 MiB CLEAR it causes, if any.

        vma_adjust_trans_huge() (6.1; vma_adjust_trans_huge/split_huge_pmd_address
        in 6.12) splits the PMD at a new unaligned boundary when the aligned block
        around it lies inside the VMA, and __split_huge_pmd notifies before it
        looks at the PMD: the CLEAR comes even without a THP.
        """
        vma = self.vma_at(addr)
        if vma is None or addr == vma.start:
            return None
        i = self.vmas.index(vma)
        self.vmas[i:i + 1] = [replace(vma, end=addr), replace(vma, start=addr)]
        b = block(addr)
        if addr % HPAGE and vma.start <= b[0] and b[1] <= vma.end:
            if b[0] in self.blocks:
                self.blocks[b[0]].pmd_mapped = False
            return b
        return None

    def set_prot(self, start: int, end: int, prot: str) -> None:
        self.vmas = [replace(v, prot=prot) if start <= v.start and v.end <= end else v for v in self.vmas]
        self._refuse_merges()

    def remove(self, start: int, end: int) -> None:
        self.vmas = [v for v in self.vmas if not (start <= v.start and v.end <= end)]
        for b in list(self.blocks):
            if start <= b and b + HPAGE <= end:
                del self.blocks[b]
        for b in list(self.populated_pmds):
            if start <= b and b + HPAGE <= end:
                self.populated_pmds.discard(b)

    def _refuse_merges(self) -> None:
        for a, b in zip(self.vmas, self.vmas[1:]):
            if a.end == b.start and (a.prot, a.thp) == (b.prot, b.thp):
                raise ModelError(f"VMAs [{a.start:#x}, {a.end:#x}) and [{b.start:#x}, {b.end:#x}) would merge; "
                                 f"vma_merge's PMD splits are not modelled")


# The operation families register their operations (and expectations) when imported.
importlib.import_module("harness.model.families")
