"""KVM's guest physical address space under KVM_SET_USER_MEMORY_REGION, from docs/memslot.md
(virt/kvm/kvm_main.c `__kvm_set_memory_region` and arch/x86/kvm/mmu in 6.1 and 6.12: the rules
the model uses are the same in both).

Pure: the model is told each request and the kernel's answer, and says what is
wrong with the answer.  It holds

- the slots of both x86 address spaces by slot number (`as_id << 16 | id`),
  slot 0 being minivmm's control slot (the L2's code; never touched here);
- the host memory behind the slots: minivmm's arena, one mapping that lives as
  long as the VM.  A slot is a window on it, so data belongs to the arena's
  bytes, not to the slot: a moved slot brings its data along (same host
  address), a slot deleted and made again over the same arena offset finds the
  old bytes, and two slots over the same offset alias each other.  Fresh
  memory comes only with a fresh VM (all zero);
- what happened to slots that went away, to explain a finding.

The L2 runs in address space 0.  A load or store at a GPA no slot maps must be
a KVM_EXIT_MMIO with that address, length and direction (a load then reads what
minivmm answered, `fill`); a store to a READONLY slot must be a KVM_EXIT_MMIO
and leave memory alone; everything else reads or writes the arena.  That is
exactly what a stale translation breaks: an MMIO SPTE or a mapping from before
the last memslot change.
"""

from __future__ import annotations

import errno as E
from dataclasses import dataclass, field
from typing import Optional, Sequence

PAGE = 4096
LOG_DIRTY_PAGES = 1 << 0           # KVM_MEM_LOG_DIRTY_PAGES
READONLY = 1 << 1                  # KVM_MEM_READONLY
VALID_FLAGS = LOG_DIRTY_PAGES | READONLY   # all that KVM_SET_USER_MEMORY_REGION takes on x86
USER_MEM_SLOTS = 32764             # x86 KVM_USER_MEM_SLOTS: SHRT_MAX - 3 internal slots
ADDRESS_SPACES = 2                 # x86 with SMM: normal and SMM (6.12: kvm_arch_nr_memslot_as_ids)
MEM_MAX_NR_PAGES = (1 << 31) - 1   # KVM_MEM_MAX_NR_PAGES
# TASK_SIZE_MAX with 4-level paging: access_ok(hva, size) needs hva + size <= this.  5-level
# paging raises it to 2^56 - 4096; requests whose errno would differ between the two are not sent.
USER_LIMIT = (1 << 47) - PAGE
U64_MAX = (1 << 64) - 1
CONTROL_SIZE = 1 << 20             # minivmm's slot 0: GPA 0 to 1 MiB
ACCESS_SIZES = (1, 2, 4)


def flag_names(flags: int) -> str:
    names = [n for bit, n in ((LOG_DIRTY_PAGES, "LOG_DIRTY_PAGES"), (READONLY, "READONLY")) if flags & bit]
    rest = flags & ~VALID_FLAGS
    return "|".join(names + ([f"{rest:#x}"] if rest else [])) or "0"


def slot_name(slot: int) -> str:
    return f"slot {slot & 0xFFFF}" + (f" (address space {slot >> 16})" if slot >> 16 else "")


def errno_name(code: int) -> str:
    return E.errorcode.get(code, str(code)) if code else "0"


@dataclass(frozen=True)
class Region:
    """struct kvm_userspace_memory_region as sent."""

    slot: int
    flags: int
    gpa: int
    size: int
    hva: int

    def describe(self, arena_hva: Optional[int] = None) -> str:
        where = (f"arena+{self.hva - arena_hva:#x}" if arena_hva is not None and 0 <= self.hva - arena_hva < 1 << 40
                 else f"hva {self.hva:#x}")
        return (f"KVM_SET_USER_MEMORY_REGION({slot_name(self.slot)}, flags {flag_names(self.flags)}, "
                f"GPA {self.gpa:#x}, size {self.size:#x}, {where})")


@dataclass(frozen=True)
class Slot:
    slot: int                   # as_id << 16 | id
    flags: int
    gpa: int
    size: int
    hva: Optional[int]          # None: minivmm's control slot, whose host address the model never needs

    @property
    def as_id(self) -> int:
        return self.slot >> 16

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def readonly(self) -> bool:
        return bool(self.flags & READONLY)

    def covers(self, gpa: int) -> bool:
        return self.gpa <= gpa < self.end

    def overlaps(self, gpa: int, end: int) -> bool:
        return self.gpa < end and gpa < self.end

    def describe(self) -> str:
        return f"{slot_name(self.slot)} [{self.gpa:#x}, {self.end:#x}) flags {flag_names(self.flags)}"


CONTROL_SLOT = Slot(slot=0, flags=0, gpa=0, size=CONTROL_SIZE, hva=None)


@dataclass(frozen=True)
class Outcome:
    """What the kernel must answer a region request: the errno (0: success), the change it makes
    (`create`, `delete`, `move`, `flags`, `none`; "" when refused) and why."""

    errno: int
    change: str
    why: str


@dataclass(frozen=True)
class MmioExit:
    """One KVM_EXIT_MMIO: `data` is the bytes a write carried (little endian), 0 for a read."""

    addr: int
    length: int
    write: bool
    data: int = 0

    def describe(self) -> str:
        what = f"write of {self.data:#x}" if self.write else "read"
        return f"MMIO {what} at {self.addr:#x} ({self.length} bytes)"


def mask(size: int) -> int:
    return (1 << (8 * size)) - 1


@dataclass
class MemslotModel:
    """One VM: its slots, its arena's bytes, and what bounds a slot's GPA."""

    arena_hva: int
    arena_size: int
    max_gpa_bits: int                # kvm_mmu_max_gfn(): MAXPHYADDR with TDP, else 52
    address_spaces: int = ADDRESS_SPACES   # KVM_CAP_MULTI_ADDRESS_SPACE: 1 without CONFIG_KVM_SMM (6.12)
    user_limit: int = USER_LIMIT
    slots: dict[int, Slot] = field(default_factory=lambda: {0: CONTROL_SLOT})
    memory: dict[int, int] = field(default_factory=dict)    # arena offset -> byte; absent = 0
    gone: list[tuple[Slot, str]] = field(default_factory=list)   # slots deleted or moved away, oldest first

    @property
    def max_gfn(self) -> int:
        return (1 << (self.max_gpa_bits - 12)) - 1

    # --- KVM_SET_USER_MEMORY_REGION -------------------------------------------

    def _argument_errno(self, r: Region) -> Optional[Outcome]:
        """The checks on the argument alone, in the kernel's order; all are EINVAL.  6.12 checks
        the flags against the V1 flags before the slot id, 6.1 after: the errno is the same."""
        as_id, ident = r.slot >> 16, r.slot & 0xFFFF
        checks = (
            (ident >= USER_MEM_SLOTS, f"slot id {ident} is not below KVM_USER_MEM_SLOTS ({USER_MEM_SLOTS})"),
            (bool(r.flags & ~VALID_FLAGS), f"flags {r.flags:#x} outside LOG_DIRTY_PAGES|READONLY"),
            (r.size % PAGE != 0, f"size {r.size:#x} is not page aligned"),
            (r.gpa % PAGE != 0, f"GPA {r.gpa:#x} is not page aligned"),
            (r.hva % PAGE != 0, f"host address {r.hva:#x} is not page aligned"),
            (r.hva + r.size > self.user_limit, "the host range is not user memory (access_ok)"),
            (as_id >= self.address_spaces, f"address space {as_id} does not exist (the VM has "
                                            f"{self.address_spaces})"),
            (r.gpa + r.size > U64_MAX, "GPA + size wraps"),
            (r.size // PAGE > MEM_MAX_NR_PAGES, "more than KVM_MEM_MAX_NR_PAGES pages"),
        )
        for failed, why in checks:
            if failed:
                return Outcome(E.EINVAL, "", why)
        return None

    def outcome(self, r: Region) -> Outcome:
        """What `__kvm_set_memory_region` must answer, in its order of checks."""
        refused = self._argument_errno(r)
        if refused:
            return refused
        old = self.slots.get(r.slot)
        if r.size == 0:
            if old is None:
                return Outcome(E.EINVAL, "", f"there is no {slot_name(r.slot)} to delete")
            return Outcome(0, "delete", f"deletes {old.describe()}")
        if old is None:
            change = "create"
        elif r.hva != old.hva or r.size != old.size or (r.flags ^ old.flags) & READONLY:
            return Outcome(E.EINVAL, "", f"{old.describe()} exists: its host address, size and READONLY "
                                         "flag cannot change")
        elif r.gpa != old.gpa:
            change = "move"
        elif r.flags != old.flags:
            change = "flags"
        else:
            return Outcome(0, "none", f"{old.describe()} is already so")
        if change in ("create", "move"):
            end = r.gpa + r.size
            clash = next((s for s in self.slots.values()
                          if s.as_id == r.slot >> 16 and s.slot != r.slot and s.overlaps(r.gpa, end)), None)
            if clash:
                return Outcome(E.EEXIST, "", f"[{r.gpa:#x}, {end:#x}) overlaps {clash.describe()}")
            if (end // PAGE) - 1 > self.max_gfn:
                return Outcome(E.EINVAL, "", f"the slot ends past kvm_mmu_max_gfn() ({self.max_gpa_bits}-bit GPAs)")
        return Outcome(0, change, f"{change}s {slot_name(r.slot)}")

    def apply(self, r: Region, outcome: Outcome) -> None:
        old = self.slots.get(r.slot)
        if outcome.change == "delete" and old:
            del self.slots[r.slot]
            self.gone.append((old, "was deleted"))
        elif outcome.change in ("create", "move", "flags"):
            if outcome.change == "move" and old:
                self.gone.append((old, f"moved away to {r.gpa:#x}"))
            self.slots[r.slot] = Slot(r.slot, r.flags, r.gpa, r.size, r.hva)

    def check_region(self, r: Region, errno: int) -> Optional[str]:
        """Judge the kernel's errno for `r` (0 on success); on agreement apply the change."""
        expected = self.outcome(r)
        if errno != expected.errno:
            return (f"{r.describe(self.arena_hva)}: the kernel returned {errno_name(errno)}, the model expects "
                    f"{errno_name(expected.errno)}: {expected.why}{self._slot_history(r.slot)}")
        self.apply(r, expected)
        return None

    def _slot_history(self, slot: int) -> str:
        return next((f"; {s.describe()} {how}" for s, how in reversed(self.gone) if s.slot == slot), "")

    # --- the L2's loads and stores ----------------------------------------------

    def slot_at(self, gpa: int) -> Optional[Slot]:
        """The slot of address space 0 (the L2's) that maps `gpa`."""
        return next((s for s in self.slots.values() if s.as_id == 0 and s.covers(gpa)), None)

    def _offset(self, slot: Slot, gpa: int, size: int) -> int:
        if slot.hva is None:
            raise ValueError(f"GPA {gpa:#x} is in minivmm's control slot, which the model does not hold")
        offset = slot.hva - self.arena_hva + gpa - slot.gpa
        if not 0 <= offset <= self.arena_size - size:
            raise ValueError(f"{slot.describe()} maps GPA {gpa:#x} outside the arena")
        return offset

    def _read(self, offset: int, size: int) -> int:
        return sum(self.memory.get(offset + k, 0) << (8 * k) for k in range(size))

    def _write(self, offset: int, size: int, value: int) -> None:
        for k in range(size):
            self.memory[offset + k] = (value >> (8 * k)) & 0xFF

    def expect_load(self, gpas: Sequence[int], size: int, fill: int) -> tuple[list[int], list[MmioExit]]:
        """The values the L2 reads and the exits on the way: MMIO where no slot is (reading `fill`)."""
        values, exits = [], []
        for gpa in gpas:
            slot = self.slot_at(gpa)
            if slot is None:
                exits.append(MmioExit(gpa, size, False))
                values.append(fill & mask(size))
            else:
                values.append(self._read(self._offset(slot, gpa, size), size))
        return values, exits

    def expect_store(self, gpas: Sequence[int], size: int, value: int) -> list[MmioExit]:
        """The exits of writing value + i to the i-th GPA: where no slot is, or the slot is READONLY."""
        exits = []
        for i, gpa in enumerate(gpas):
            slot = self.slot_at(gpa)
            data = (value + i) & mask(size)
            if slot is None or slot.readonly:
                exits.append(MmioExit(gpa, size, True, data))
        return exits

    def store(self, gpas: Sequence[int], size: int, value: int) -> None:
        for i, gpa in enumerate(gpas):
            slot = self.slot_at(gpa)
            if slot is not None and not slot.readonly:
                self._write(self._offset(slot, gpa, size), size, (value + i) & mask(size))

    def check_load(self, gpas: Sequence[int], size: int, fill: int, values: Sequence[int],
                   exits: Sequence[MmioExit]) -> Optional[str]:
        want_values, want_exits = self.expect_load(gpas, size, fill)
        return (self._exits_problem(f"load of {size} bytes", want_exits, exits)
                or self._values_problem(gpas, size, want_values, values))

    def check_store(self, gpas: Sequence[int], size: int, value: int, exits: Sequence[MmioExit]) -> Optional[str]:
        """Judge a store's exits; on agreement the arena takes the written bytes."""
        problem = self._exits_problem(f"store of {size} bytes", self.expect_store(gpas, size, value), exits)
        if problem is None:
            self.store(gpas, size, value)
        return problem

    # --- explanations -----------------------------------------------------------

    def explain(self, gpa: int, write: bool = False) -> str:
        """Why the model expects memory or MMIO at `gpa`."""
        slot = self.slot_at(gpa)
        if slot is not None and slot.readonly and write:
            return f"{slot.describe()} maps it read-only: a write is MMIO"
        if slot is not None:
            return f"{slot.describe()} maps it"
        ghosts = [f"{s.describe()} {how}" for s, how in reversed(self.gone) if s.as_id == 0 and s.covers(gpa)]
        return "no slot maps it" + (f" ({'; '.join(ghosts[:2])})" if ghosts else "")

    def _exits_problem(self, what: str, want: Sequence[MmioExit], got: Sequence[MmioExit]) -> Optional[str]:
        if list(want) == list(got):
            return None
        for k in range(max(len(want), len(got))):
            w = want[k] if k < len(want) else None
            g = got[k] if k < len(got) else None
            if w == g:
                continue
            parts = []
            if w is not None:
                parts.append(f"the model expects {w.describe()}: {self.explain(w.addr, w.write)}")
            else:
                parts.append("the model expects no more exits")
            if g is not None:
                parts.append(f"the kernel gave {g.describe()}: {self.explain(g.addr, g.write)}")
            else:
                parts.append("the kernel gave no more exits (the access reached memory)")
            return (f"{what}: KVM_EXIT_MMIO #{k + 1} differs: " + "; ".join(parts)
                    + f" [expected {len(want)} exits, got {len(got)}]")
        return None   # unreachable: the lists differ somewhere

    def _values_problem(self, gpas: Sequence[int], size: int, want: Sequence[int],
                        got: Sequence[int]) -> Optional[str]:
        if len(got) != len(want):
            return f"load: the L2 returned {len(got)} values for {len(want)} GPAs"
        wrong = [(gpa, w, g) for gpa, w, g in zip(gpas, want, got) if w != g]
        if not wrong:
            return None
        shown = "; ".join(f"GPA {gpa:#x}: read {g:#x}, expected {w:#x} ({self.explain(gpa)})"
                          for gpa, w, g in wrong[:4])
        return f"load of {size} bytes: wrong data at {len(wrong)} of {len(gpas)} GPAs: {shown}"
