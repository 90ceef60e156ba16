"""dirty-log: the kernel's KVM dirty log against the model, by seeded random operation sequences.

hypothesis's stateful testing drives minivmm (the system under test) and
harness.model.dirty_log (the oracle) with the same operations: create a VM
(fresh per example), write and read pages from the L2, GET and CLEAR the
dirty log with aligned, misaligned and out-of-slot ranges, enable the manual
protect capability with valid and invalid values, toggle
KVM_MEM_LOG_DIRTY_PAGES, drop pages with MADV_DONTNEED.  Every answer is
checked as it comes; a failure is shrunk to a minimal sequence and reported
with the seed and the exact requests minivmm was sent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule

from harness.guest_data import field as guest_field
from harness.guest_data import MAX_ERRNO, int_field, int_list_field, parse_hex_bytes
from harness.kvm.vmm import Vmm
from harness.model.dirty_log import (WORD, DirtyLogModel, bitmap_bytes, describe, errno_name,
                                     expected_values_problem)
from harness.scenarios import exploration
from harness.scenarios.base import NeedsKvm, ScenarioContext
from harness.scenarios.exploration import Exploration, Session, VmmMachine, conclude, watched
from harness.verdict import Verdict

# Slot sizes: 64-page multiples and not (259 and 1000 end mid-word), one 2 MiB THP's worth.
SLOT_PAGES = (64, 259, 512, 1000)
# Slot ids: the test slot; the control slot (no dirty bitmap); an id with no slot; the first id
# past KVM_USER_MEM_SLOTS; address space 1 (SMM, empty); address space 2 (does not exist).
SLOT_IDS = (1, 0, 7, 32764, (1 << 16) | 1, (2 << 16) | 1)
# Capability values: disable, enable, enable + INITIALLY_SET, and invalid ones.
CAP_VALUES = (0, 1, 3, 2, 4, 5, 7)


@dataclass(frozen=True)
class Answer:
    """What the rules read of minivmm's answer: the ioctl's ret and errno (every answer has them),
    and, by request, the slot's pages (create), the values the L2 read (read), the bitmap (get)."""

    ret: int
    errno: int
    pages: int = 0
    values: tuple[int, ...] = ()
    bitmap: bytes = b""

    @staticmethod
    def parse(op: str, answer: dict[str, Any]) -> "Answer":
        source = f"minivmm {op}"
        ret = int_field(answer, "ret", source)
        typed = Answer(ret=ret, errno=int_field(answer, "errno", source, lo=0, hi=MAX_ERRNO))
        if op == "create":
            return replace(typed, pages=int_field(answer, "pages", source, lo=0))
        if op == "read":
            return replace(typed, values=tuple(int_list_field(answer, "values", source, lo=0, hi=0xFFFFFFFF)))
        if op == "get" and ret >= 0:
            return replace(typed, bitmap=parse_hex_bytes(guest_field(answer, "bitmap", str, source), source))
        return typed


class DirtyLogMachine(VmmMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model: Optional[DirtyLogModel] = None
        self.last_get = 0

    # --- plumbing -------------------------------------------------------------

    def call(self, op: str, **args: Any) -> Answer:
        return self.exchange(op, args, Answer.parse)

    @staticmethod
    def check_errno(what: str, answer: Answer, expected: int) -> None:
        got = answer.errno if answer.ret < 0 else 0
        assert got == expected, (f"{what}: the kernel returned {answer.ret} ({errno_name(got)}), "
                                 f"the model expects {errno_name(expected)}")

    def pages(self, data: st.DataObject, label: str) -> list[int]:
        n = self.model.npages if self.model else 1
        scattered = st.lists(st.integers(0, n - 1), min_size=1, max_size=6, unique=True)
        run = st.tuples(st.integers(0, n - 1), st.integers(1, 3 * WORD)).map(
            lambda t: list(range(t[0], min(n, t[0] + t[1]))))
        return data.draw(st.one_of(scattered, run), label=label)

    # --- the VM ---------------------------------------------------------------

    @initialize(npages=st.sampled_from(SLOT_PAGES), cap=st.sampled_from((None, 1, 3)),
                logging=st.booleans(), thp=st.sampled_from(("never", "default")))
    @watched
    def create(self, npages: int, cap: Optional[int], logging: bool, thp: str) -> None:
        args: dict[str, Any] = {"pages": npages, "flags": int(logging), "thp": thp}
        if cap is not None:
            args["cap"] = cap
        answer = self.call("create", **args)
        assert answer.pages == npages
        self.model = DirtyLogModel.created(npages, int(logging), cap)

    @watched
    def teardown(self) -> None:
        """The L2 reads back every page the example wrote (and a few it did not), then the VM goes."""
        if self.model is None:
            return
        try:
            touched = sorted(set(self.model.memory) | {0, self.model.npages - 1})
            answer = self.call("read", pages=touched)
            problem = expected_values_problem(touched, self.model.read(touched), list(answer.values))
            assert problem is None, f"at the end of the example, {problem}"
        finally:
            self.call("destroy")

    # --- the L2 ---------------------------------------------------------------

    @rule(data=st.data(), value=st.integers(1, 0xFFFFFFFF), index=st.booleans())
    @watched
    def write(self, data: st.DataObject, value: int, index: bool) -> None:
        assert self.model
        pages = self.pages(data, "pages written")
        self.call("write", pages=pages, value=value, index=int(index))
        self.model.write(pages, value, index)

    @rule(value=st.integers(1, 0xFFFFFFFF))
    @watched
    def write_all(self, value: int) -> None:
        """The L2 writes every page of the slot, as the guest of the kernel's dirty_log_test does
        between two harvests.  A page written, harvested and cleared is written again only by
        chance through `write`'s few random pages; this way every page is, so a CLEAR that left
        any page writable shows in the next GET (README, "dirty-log", for what that found)."""
        assert self.model
        pages = list(range(self.model.npages))
        self.call("write", pages=pages, value=value, index=1)
        self.model.write(pages, value, True)

    @rule(data=st.data())
    @watched
    def read(self, data: st.DataObject) -> None:
        assert self.model
        pages = self.pages(data, "pages read")
        answer = self.call("read", pages=pages)
        problem = expected_values_problem(pages, self.model.read(pages), list(answer.values))
        assert problem is None, problem

    @rule(data=st.data())
    @watched
    def dontneed(self, data: st.DataObject) -> None:
        assert self.model
        first = data.draw(st.integers(0, self.model.npages - 1), label="first page")
        count = data.draw(st.integers(1, min(64, self.model.npages - first)), label="pages")
        answer = self.call("madvise", offset=first * 4096, length=count * 4096, advice="dontneed")
        self.check_errno("MADV_DONTNEED", answer, 0)
        self.model.dontneed(first, count)

    # --- the dirty log --------------------------------------------------------

    @rule(value=st.sampled_from(CAP_VALUES), flags=st.sampled_from((0, 1)))
    @watched
    def enable_cap(self, value: int, flags: int) -> None:
        assert self.model
        answer = self.call("cap", value=value, flags=flags)
        self.check_errno(f"KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2, args[0]={value}, flags={flags})",
                         answer, self.model.enable_cap(value, flags))

    @rule()
    @watched
    def toggle_logging(self) -> None:
        assert self.model
        flags = self.model.flags ^ 1
        answer = self.call("flags", flags=flags)
        self.check_errno(f"KVM_SET_USER_MEMORY_REGION(flags={flags})", answer, 0)
        self.model.set_flags(flags)

    @rule(slot=st.one_of(st.just(1), st.sampled_from(SLOT_IDS)))
    @watched
    def get(self, slot: int) -> None:
        assert self.model
        answer = self.call("get", slot=slot)
        self.check_errno(f"KVM_GET_DIRTY_LOG(slot={slot:#x})", answer, self.model.get_errno(slot))
        if answer.ret < 0:
            return
        raw = answer.bitmap
        assert len(raw) == bitmap_bytes(self.model.npages), (
            f"KVM_GET_DIRTY_LOG: {len(raw)} bytes, expected {bitmap_bytes(self.model.npages)}")
        bitmap = int.from_bytes(raw, "little")
        mode = "manual protect" if self.model.manual else "legacy harvest"
        problems = self.model.get(bitmap)
        assert not problems, f"KVM_GET_DIRTY_LOG ({mode}) returned {describe(bitmap)}: " + "; ".join(problems)
        self.last_get = bitmap

    @rule()
    @watched
    def get_then_clear_all(self) -> None:
        """The clear-log loop of the kernel's dirty_log_test: GET, then CLEAR the whole slot with
        the bitmap GET returned."""
        assert self.model
        self.get(1)
        if self.model.logging:
            n = self.model.npages
            self._clear(1, 0, n, self.last_get, bitmap_bytes(n) * 8)

    @rule(value=st.integers(1, 0xFFFFFFFF))
    def harvest(self, value: int) -> None:
        """One round of dirty_log_test's clear-log loop, checked on the whole slot: the L2 writes
        every page, GET, CLEAR what GET returned, the L2 writes every page again, GET: every page
        the CLEAR protected again must be logged by the second write.  (Not @watched itself: the
        rules it calls note their own failures.)"""
        self.write_all(value)
        self.get_then_clear_all()
        self.write_all(value ^ 0xFFFFFFFF or 1)
        self.get(1)

    @rule(data=st.data(), slot=st.one_of(st.just(1), st.sampled_from(SLOT_IDS)))
    @watched
    def clear(self, data: st.DataObject, slot: int) -> None:
        assert self.model
        n = self.model.npages
        aligned = st.integers(0, n // WORD).map(lambda w: w * WORD)
        first = data.draw(st.one_of(aligned, st.integers(0, n + WORD)), label="first_page")
        rest = max(n - first, 0)
        num = data.draw(st.one_of(st.just(rest), aligned, st.integers(0, rest + 2 * WORD)), label="num_pages")
        width = min((num + WORD - 1) // WORD * WORD, bitmap_bytes(n) * 8 + WORD)
        bits = data.draw(st.one_of(st.just((1 << width) - 1), st.just(self.last_get >> first),
                                   st.integers(0, (1 << width) - 1)), label="bitmap")
        self._clear(slot, first, num, bits, width)

    def _clear(self, slot: int, first: int, num: int, bits: int, width: int) -> None:
        """KVM_CLEAR_DIRTY_LOG with `bits` sent as `width` bits; the errno, then the model's clear."""
        assert self.model
        bits &= (1 << width) - 1
        answer = self.call("clear", slot=slot, first=first, num=num,
                           bitmap=bits.to_bytes(width // 8, "little").hex())
        expected = self.model.clear_errno(slot, first, num)
        self.check_errno(f"KVM_CLEAR_DIRTY_LOG(slot={slot:#x}, first_page={first}, num_pages={num})",
                         answer, expected)
        if expected == 0:
            self.model.clear(first, num, bits)


def explore(vmm: Vmm, run_seed: int, examples: int, steps: int) -> Exploration:
    return exploration.explore(DirtyLogMachine, Session(vmm), run_seed, examples, steps)


class DirtyLog(NeedsKvm):
    name = "dirty-log"
    description = ("KVM_GET/CLEAR_DIRTY_LOG, manual protect and INITIALLY_SET against the model: seeded random "
                   "sequences on a real VM, failures shrunk to a minimal sequence")
    knobs = frozenset({"examples", "steps", "vmm_corrupt"})

    def run_with_kvm(self, ctx: ScenarioContext) -> Verdict:
        cfg = ctx.config
        with open(ctx.out_dir / "requests.log", "w") as log, \
                Vmm(ctx.guest, corrupt=cfg.vmm_corrupt, transcript=log) as vmm:
            result = explore(vmm, ctx.seed, cfg.examples, cfg.steps)
        rate = (f"{result.examples} examples, {result.ops} operations in {result.seconds:.1f} s: "
                f"{result.ops / result.seconds:.1f} operations/s, {result.examples * 60 / result.seconds:.1f} "
                f"examples/min (seed {ctx.seed})")
        return conclude(ctx, result, cfg.vmm_corrupt, (rate,))
