"""memslot: memslot changes never leave a stale translation, by seeded random request sequences.

hypothesis's stateful testing drives minivmm (the system under test) and
harness.model.memslot (the oracle) with the same requests: a fresh VM per
example with an arena of host memory, KVM_SET_USER_MEMORY_REGION adding,
deleting, moving and re-flagging slots (READONLY, LOG_DIRTY_PAGES) over small
windows of GPA and arena so that slots overlap, alias and reappear, requests
the kernel must refuse (each bad argument, overlaps, changes it does not
allow), and the L2's loads and stores of 1, 2 and 4 bytes at GPAs where slots
are, were and never were.  Every answer is checked as it comes: the errno, the
value read, every KVM_EXIT_MMIO (address, length, direction, data); at the end
of an example the L2 reads back every word it stored.  A failure is shrunk to a
minimal sequence and reported with the seed and the exact requests.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Optional

from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule

from harness.guest_data import MAX_ERRNO, U64_MAX, GuestDataError, field as guest_field
from harness.guest_data import int_field, int_list_field, int_map_field
from harness.kvm.vmm import Vmm
from harness.model.memslot import (ACCESS_SIZES, ADDRESS_SPACES, LOG_DIRTY_PAGES, PAGE, READONLY, MemslotModel,
                                   MmioExit, Region, Slot, errno_name)
from harness.scenarios import exploration
from harness.scenarios.base import NeedsKvm, ScenarioContext
from harness.scenarios.exploration import Exploration, Session, VmmMachine, conclude, watched
from harness.verdict import Verdict

# Random examples (a fresh VM each) and requests per example at most: about 15 s per kernel under TCG,
# in a suite every scenario shares.
EXAMPLES = 60
STEPS = 25
# The arena: 4 MiB, so two 2 MiB slots fit and a 2 MiB-aligned slot can be mapped huge.
ARENA_PAGES = 1024
# The GPA window slots go to: 1 GiB, small slots in its first pages, 2 MiB slots at 2 and 4 MiB.
WINDOW = 1 << 30
SMALL_PAGES = 24
HUGE_PAGES = 512
SLOT_PAGES = (1, 2, 3, 8)
# Slot ids the requests use: three in address space 0 (the L2's) and one in the SMM address space,
# which the L2 never sees.
SLOT_IDS = (1, 2, 3, (1 << 16) | 1)
# Slot flags, READONLY a third of the time (a store to a READONLY slot is MMIO: a few go a long way).
FLAGS = (0, LOG_DIRTY_PAGES, READONLY, 0, LOG_DIRTY_PAGES, LOG_DIRTY_PAGES | READONLY)
MAX_ACCESSES = 6        # GPAs per load or store the rules send
BATCH = 64              # GPAs per request at the end of an example (minivmm's limit)
KERNEL_HVA = 0xFFFF888000000000   # the direct map: no user address with 4- or 5-level paging
VCPU_STATS = ("pf_mmio_spte_created", "mmio_exits")


@dataclass(frozen=True)
class Answer:
    """What the rules read of minivmm's answer: ret and errno (every answer has them), and by request
    the arena and the machine's GPA bound (create), the values read (load), the MMIO exits (load,
    store), the vCPU's stats (stats)."""

    ret: int
    errno: int
    arena: int = 0
    max_gpa_bits: int = 0
    address_spaces: int = 0
    values: tuple[int, ...] = ()
    exits: tuple[MmioExit, ...] = ()
    stats: tuple[tuple[str, int], ...] = ()

    @staticmethod
    def parse(op: str, answer: dict[str, Any]) -> "Answer":
        source = f"minivmm {op}"
        typed = Answer(ret=int_field(answer, "ret", source),
                       errno=int_field(answer, "errno", source, lo=0, hi=MAX_ERRNO))
        if op == "create":
            if int_field(answer, "arena_pages", source) != ARENA_PAGES:
                raise GuestDataError(source, f"expected an arena of {ARENA_PAGES} pages", answer)
            # kvm_mmu_max_gfn(): the CPU's MAXPHYADDR with TDP, 52 bits without.
            tdp = int_field(answer, "tdp", source, lo=0, hi=1)
            return replace(typed, arena=int_field(answer, "arena", source, lo=1, hi=U64_MAX),
                           max_gpa_bits=int_field(answer, "maxphyaddr", source, lo=32, hi=52) if tdp else 52,
                           # The capability answers 0 where KVM has one address space (no SMM).
                           address_spaces=max(1, int_field(answer, "address_spaces", source, lo=0,
                                                           hi=ADDRESS_SPACES)))
        if op == "load":
            typed = replace(typed, values=tuple(int_list_field(answer, "values", source, lo=0, hi=0xFFFFFFFF)))
        if op in ("load", "store"):
            return replace(typed, exits=parse_exits(answer, source))
        if op == "stats":
            stats = int_map_field(answer, "stats", source)
            return replace(typed, stats=tuple((name, stats.get(name, 0)) for name in VCPU_STATS))
        return typed


def parse_exits(answer: dict[str, Any], source: str) -> tuple[MmioExit, ...]:
    """minivmm's "exits": each {"addr", "len", "write", "data"}, at most one per GPA asked."""
    items = guest_field(answer, "exits", list, source)
    if len(items) > BATCH:
        raise GuestDataError(source, f"{len(items)} MMIO exits for at most {BATCH} accesses")
    where = f"{source} 'exits'"
    return tuple(MmioExit(addr=int_field(e, "addr", where, lo=0, hi=U64_MAX),
                          length=int_field(e, "len", where, lo=0, hi=8),
                          write=bool(int_field(e, "write", where, lo=0, hi=1)),
                          data=int_field(e, "data", where, lo=0, hi=U64_MAX)) for e in items)


@dataclass(frozen=True)
class RegionArgs:
    """A region request as the rules build it: the host address an arena offset, or a raw one."""

    slot: int
    flags: int
    gpa: int
    size: int
    offset: Optional[int]
    hva: Optional[int] = None


Draw = Callable[[st.SearchStrategy[Any], str], Any]

# Requests with one thing odd about them, each made from a plausible one (a slot that exists, for
# ON_A_SLOT): the kernel must refuse most with EINVAL or EEXIST, and take "top of MAXPHYADDR" and
# "same again".
ODD: dict[str, Callable[[RegionArgs, Draw, MemslotModel], RegionArgs]] = {
    "size misaligned": lambda r, draw, m: replace(r, size=r.size + draw(st.sampled_from((1, PAGE // 2, PAGE - 1)),
                                                                         "bytes")),
    "GPA misaligned": lambda r, draw, m: replace(r, gpa=r.gpa + draw(st.sampled_from((1, 0x800)), "bytes")),
    "host address misaligned": lambda r, draw, m: replace(r, offset=(r.offset or 0) + draw(
        st.sampled_from((8, 0x800)), "bytes")),
    "kernel host address": lambda r, draw, m: replace(r, offset=None, hva=KERNEL_HVA),
    "flags": lambda r, draw, m: replace(r, flags=r.flags | draw(st.sampled_from((1 << 2, 1 << 3, 1 << 16, 1 << 31)),
                                                                "flag")),
    "slot id": lambda r, draw, m: replace(r, slot=draw(st.sampled_from((32764, 32766, 32767, 0xFFFF)), "slot")),
    "address space": lambda r, draw, m: replace(r, slot=draw(st.sampled_from(((2 << 16) | 1, (0xFFFF << 16) | 1)),
                                                             "slot")),
    "GPA wraps": lambda r, draw, m: replace(r, gpa=(1 << 64) - PAGE, size=2 * PAGE),
    # One page more than KVM_MEM_MAX_NR_PAGES (and past TASK_SIZE_MAX with 4-level paging).
    "too many pages": lambda r, draw, m: replace(r, size=(1 << 31) * PAGE),
    "past MAXPHYADDR": lambda r, draw, m: replace(r, gpa=(1 << m.max_gpa_bits) - r.size + PAGE),
    "top of MAXPHYADDR": lambda r, draw, m: replace(r, gpa=(1 << m.max_gpa_bits) - r.size),
    "over slot 0": lambda r, draw, m: replace(r, gpa=draw(st.sampled_from((0, 0x80000, (1 << 20) - PAGE)), "GPA")),
    "resize": lambda r, draw, m: replace(r, size=r.size + PAGE),
    "rebind": lambda r, draw, m: replace(r, offset=(r.offset or 0) + PAGE),
    "same again": lambda r, draw, m: r,
    "delete what is not there": lambda r, draw, m: replace(r, size=0, slot=draw(st.sampled_from(
        [n for n in SLOT_IDS if n not in m.slots] + [4, (1 << 16) | 4]), "slot")),
}
ON_A_SLOT = frozenset({"resize", "rebind", "same again", "flags", "GPA misaligned"})


@dataclass
class MemslotSession(Session):
    """The session, and what memslot's requests came to over every example."""

    outcomes: Counter[str] = field(default_factory=Counter)    # region answers: change or errno
    accesses: int = 0
    exits: int = 0
    vcpu_stats: Counter[str] = field(default_factory=Counter)

    def tallies(self) -> dict[str, Any]:
        return {"outcomes": dict(self.outcomes), "accesses": self.accesses, "exits": self.exits,
                "vcpu_stats": dict(self.vcpu_stats)}


class MemslotMachine(VmmMachine):
    session: ClassVar[MemslotSession]

    def __init__(self) -> None:
        super().__init__()
        self.model: Optional[MemslotModel] = None
        self.stored: set[int] = set()       # 4-byte words the example stored to memory, read back at the end

    # --- plumbing -------------------------------------------------------------

    def call(self, op: str, **args: Any) -> Answer:
        return self.exchange(op, args, Answer.parse)

    def region(self, slot: int, flags: int, gpa: int, size: int, offset: Optional[int] = None,
               hva: Optional[int] = None) -> None:
        """KVM_SET_USER_MEMORY_REGION, its host address an arena offset (or a raw address); the errno
        judged against the model, which then takes the change."""
        assert self.model
        where = {"offset": offset} if offset is not None else {"hva": hva}
        answer = self.call("region", slot=slot, flags=flags, gpa=gpa, size=size, **where)
        address = self.model.arena_hva + offset if offset is not None else hva
        assert address is not None
        request = Region(slot, flags, gpa, size, address)
        got = answer.errno if answer.ret < 0 else 0
        change = self.model.outcome(request).change
        problem = self.model.check_region(request, got)
        assert problem is None, problem
        self.session.outcomes[errno_name(got) if got else change] += 1

    def offset_of(self, slot: Slot) -> int:
        assert self.model and slot.hva is not None
        return slot.hva - self.model.arena_hva

    def user_slots(self, address_space: Optional[int] = None) -> list[Slot]:
        assert self.model
        return [s for n, s in sorted(self.model.slots.items())
                if n != 0 and (address_space is None or s.as_id == address_space)]

    # --- what the rules draw ----------------------------------------------------

    @staticmethod
    def placement(data: st.DataObject) -> tuple[int, int, int]:
        """(GPA, pages, arena offset) of a slot: small slots over a few pages of GPA and arena so that
        they overlap and alias; now and then a 2 MiB slot, 2 MiB aligned or not."""
        huge = data.draw(st.integers(0, 9), label="huge?") == 9
        if huge:
            gpa_page = data.draw(st.sampled_from((HUGE_PAGES, 2 * HUGE_PAGES, HUGE_PAGES + 1)), label="GPA page")
            return WINDOW + gpa_page * PAGE, HUGE_PAGES, data.draw(st.sampled_from((0, HUGE_PAGES)),
                                                                   label="arena page") * PAGE
        pages = data.draw(st.sampled_from(SLOT_PAGES), label="pages")
        gpa_page = data.draw(st.integers(0, SMALL_PAGES - pages), label="GPA page")
        offset_page = data.draw(st.one_of(st.integers(0, 12), st.just(HUGE_PAGES)), label="arena page")
        return WINDOW + gpa_page * PAGE, pages, offset_page * PAGE

    def gpas(self, data: st.DataObject, size: int, label: str) -> list[int]:
        """Up to MAX_ACCESSES distinct size-aligned GPAs below 4 GiB: in a slot that is there, in or just
        outside one that is or was there, or anywhere in the window."""
        assert self.model
        now = [s for s in self.user_slots(0) if WINDOW <= s.gpa and s.end <= 1 << 32]
        before = now + [g for g, _ in self.model.gone if g.as_id == 0 and WINDOW <= g.gpa and g.end <= 1 << 32]
        # Weights: half in a slot that is there, a quarter around slots that are or were, a quarter
        # anywhere in the window (the small slots' pages, then the 2 MiB slots').
        pages = 2 * [st.sampled_from([(s.gpa // PAGE, s.end // PAGE - 1) for s in now])] if now else []
        pages += [st.sampled_from([(s.gpa // PAGE - 1, s.end // PAGE) for s in before])] if before else []
        window = st.integers(0, SMALL_PAGES + 2 * HUGE_PAGES).map(
            lambda k: WINDOW // PAGE + (k if k <= SMALL_PAGES else HUGE_PAGES + k - SMALL_PAGES - 1))
        page = st.one_of(*(p.flatmap(lambda r: st.integers(*r)) for p in pages), window)
        within = st.sampled_from((0, PAGE - size)) | st.integers(0, PAGE // size - 1).map(lambda k: k * size)
        spots = st.tuples(page, within).map(lambda t: t[0] * PAGE + t[1])
        return data.draw(st.lists(spots, min_size=1, max_size=MAX_ACCESSES, unique=True), label=label)

    # --- the VM ---------------------------------------------------------------

    @initialize(data=st.data(), slots=st.integers(1, 3))
    @watched
    def create(self, data: st.DataObject, slots: int) -> None:
        """A fresh VM with its arena, and a few slots to start from (the kernel may refuse some)."""
        answer = self.call("create", pages=0, arena=ARENA_PAGES)
        self.model = MemslotModel(arena_hva=answer.arena, arena_size=ARENA_PAGES * PAGE,
                                  max_gpa_bits=answer.max_gpa_bits, address_spaces=answer.address_spaces)
        for slot in SLOT_IDS[:slots]:
            gpa, pages, offset = self.placement(data)
            self.region(slot, data.draw(st.sampled_from(FLAGS), label="flags"), gpa, pages * PAGE, offset=offset)

    @watched
    def teardown(self) -> None:
        """The L2 reads back every word the example stored to memory (wherever it is mapped now, if at
        all), then the vCPU's MMIO counters, then the VM goes."""
        if self.model is None:
            return
        try:
            words = sorted(self.stored)
            for i in range(0, len(words), BATCH):
                self._load(words[i:i + BATCH], 4, 0x5A5A5A5A, "at the end of the example, ")
            stats = self.call("stats", vcpu=1).stats
            self.session.vcpu_stats.update(dict(stats))
        finally:
            self.call("destroy")

    # --- memslot changes --------------------------------------------------------

    @rule(data=st.data(), flags=st.sampled_from(FLAGS))
    @watched
    def add(self, data: st.DataObject, flags: int) -> None:
        """A slot at a fresh place, mostly on a free id; on an id that has a slot this is a change the
        kernel judges (a move, or EINVAL)."""
        assert self.model
        free = [n for n in SLOT_IDS if n not in self.model.slots]
        ids = st.sampled_from(SLOT_IDS)
        if free:
            ids = st.one_of(3 * [st.sampled_from(free)] + [ids])
        slot = data.draw(ids, label="slot")
        gpa, pages, offset = self.placement(data)
        self.region(slot, flags, gpa, pages * PAGE, offset=offset)

    @rule(data=st.data())
    @watched
    def delete(self, data: st.DataObject) -> None:
        """Delete an existing slot."""
        existing = self.user_slots()
        if not existing:
            return
        s = data.draw(st.sampled_from(existing), label="slot")
        self.region(s.slot, s.flags, s.gpa, 0, offset=self.offset_of(s))

    @rule(data=st.data(), toggle_log=st.booleans())
    @watched
    def move(self, data: st.DataObject, toggle_log: bool) -> None:
        """Move an existing slot to another GPA (perhaps onto its own old range, or onto another slot),
        with or without toggling dirty logging on the way."""
        existing = self.user_slots()
        if not existing:
            return
        s = data.draw(st.sampled_from(existing), label="slot")
        pages = s.size // PAGE
        span = SMALL_PAGES - pages if pages < HUGE_PAGES else 3 * HUGE_PAGES
        gpa = WINDOW + data.draw(st.integers(0, max(span, 0)), label="GPA page") * PAGE
        self.region(s.slot, s.flags ^ (LOG_DIRTY_PAGES if toggle_log else 0), gpa, s.size, offset=self.offset_of(s))

    @rule(data=st.data(), bit=st.sampled_from((LOG_DIRTY_PAGES, LOG_DIRTY_PAGES, READONLY)))
    @watched
    def reflag(self, data: st.DataObject, bit: int) -> None:
        """Toggle a flag of an existing slot in place: LOG_DIRTY_PAGES is a FLAGS_ONLY change, READONLY
        cannot change (EINVAL)."""
        existing = self.user_slots()
        if not existing:
            return
        s = data.draw(st.sampled_from(existing), label="slot")
        self.region(s.slot, s.flags ^ bit, s.gpa, s.size, offset=self.offset_of(s))

    @rule(data=st.data(), kind=st.sampled_from(sorted(ODD)))
    @watched
    def odd(self, data: st.DataObject, kind: str) -> None:
        """A request with one thing odd about it (ODD): the kernel refuses most, a few it must take."""
        assert self.model
        existing = self.user_slots()
        if existing and kind in ON_A_SLOT:
            s = data.draw(st.sampled_from(existing), label="slot")
            base = RegionArgs(s.slot, s.flags, s.gpa, s.size, self.offset_of(s))
        else:
            gpa, pages, offset = self.placement(data)
            base = RegionArgs(data.draw(st.sampled_from(SLOT_IDS), label="slot"), 0, gpa, pages * PAGE, offset)
        r = ODD[kind](base, lambda strategy, label: data.draw(strategy, label=label), self.model)
        self.region(r.slot, r.flags, r.gpa, r.size, offset=r.offset, hva=r.hva)

    # --- the L2 -----------------------------------------------------------------

    def _load(self, gpas: list[int], size: int, fill: int, context: str = "") -> None:
        assert self.model
        answer = self.call("load", gpas=gpas, size=size, fill=fill)
        self.session.accesses += len(gpas)
        self.session.exits += len(answer.exits)
        problem = self.model.check_load(gpas, size, fill, answer.values, answer.exits)
        assert problem is None, context + problem

    @rule(data=st.data(), size=st.sampled_from(ACCESS_SIZES), fill=st.integers(0, 0xFFFFFFFF))
    @watched
    def load(self, data: st.DataObject, size: int, fill: int) -> None:
        self._load(self.gpas(data, size, "GPAs loaded"), size, fill)

    @rule(data=st.data(), size=st.sampled_from(ACCESS_SIZES), value=st.integers(0, 0xFFFFFFFF))
    @watched
    def store(self, data: st.DataObject, size: int, value: int) -> None:
        assert self.model
        gpas = self.gpas(data, size, "GPAs stored")
        answer = self.call("store", gpas=gpas, size=size, value=value)
        self.session.accesses += len(gpas)
        self.session.exits += len(answer.exits)
        reached = [gpa for gpa in gpas if (slot := self.model.slot_at(gpa)) is not None and not slot.readonly]
        problem = self.model.check_store(gpas, size, value, answer.exits)
        assert problem is None, problem
        self.stored.update(gpa & ~3 for gpa in reached)


def explore(vmm: Vmm, run_seed: int, examples: int = EXAMPLES,
            steps: int = STEPS) -> tuple[Exploration, MemslotSession]:
    """The exploration, and the session with what its requests came to."""
    session = MemslotSession(vmm)
    return exploration.explore(MemslotMachine, session, run_seed, examples, steps), session


def summary(result: Exploration, session: MemslotSession, run_seed: int) -> tuple[str, ...]:
    """The notes: the rate (memslot operations checked per second), what the requests came to."""
    outcomes = ", ".join(f"{name or '?'} {n}" for name, n in sorted(session.outcomes.items()))
    stats = ", ".join(f"{name} {n}" for name, n in sorted(session.vcpu_stats.items()))
    return (f"{result.examples} examples, {result.ops} operations in {result.seconds:.1f} s: "
            f"{result.ops / result.seconds:.1f} operations/s (seed {run_seed})",
            f"KVM_SET_USER_MEMORY_REGION answers: {outcomes}",
            f"{session.accesses} L2 accesses, {session.exits} KVM_EXIT_MMIO; vCPU stats summed: {stats}")


class Memslot(NeedsKvm):
    name = "memslot"
    description = ("KVM_SET_USER_MEMORY_REGION create/delete/move/re-flag (READONLY, LOG_DIRTY_PAGES) against "
                   "the model: every errno, every L2 load and store, every KVM_EXIT_MMIO; no stale translation")
    knobs: frozenset[str] = frozenset()
    corrupt = "off"

    def run_with_kvm(self, ctx: ScenarioContext) -> Verdict:
        with open(ctx.out_dir / "requests.log", "w") as log, \
                Vmm(ctx.guest, corrupt=self.corrupt, transcript=log) as vmm:
            result, session = explore(vmm, ctx.seed)
        return conclude(ctx, result, self.corrupt, summary(result, session, ctx.seed), session.tallies())


class MemslotSkipDelete(Memslot):
    """The oracle's self-test: minivmm skips one slot deletion and answers as if it had happened."""

    name = "memslot-skip-delete"
    description = ("(oracle self-test, not in the default configs) memslot with a VMM that skips one slot "
                   "deletion: must fail with a shrunk sequence")
    corrupt = "skip-delete"
