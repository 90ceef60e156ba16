"""The dirty-log scenario's rules against a kernel-like dirty log (no VM): the rules that write the
whole slot find a CLEAR that leaves pages writable, which the rules writing a few random pages found
only by chance.

FakeKvm keeps a dirty log the way KVM does for one valid slot, not the way the model states it: a
write is logged when it faults on a write-protected page, and the fault makes the page writable;
GET in legacy mode and CLEAR in manual-protect mode write-protect the pages they harvest.  With
`bug`, CLEAR re-protects only the lower 32 pages of each 64-page word, as a broken
kvm_clear_dirty_log_protect() did on a 6.1 tree (the scenario's default seed passed 200 examples
on it before these rules, and fails in its 7th example with them).
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from harness.model.dirty_log import WORD, bitmap_bytes
from harness.scenarios.dirty_log import DirtyLogMachine
from harness.scenarios.exploration import Session


class FakeKvm:
    def __init__(self, bug: bool) -> None:
        self.bug = bug
        self.transcript = None
        self.last_request = ""
        self.guest = SimpleNamespace(deadline=None)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.last_request = json.dumps({"op": op, **args})
        ok: dict[str, Any] = {"ret": 0, "errno": 0}
        if op == "create":
            self.pages, self.logging, self.manual = args["pages"], bool(args["flags"]), args.get("cap") in (1, 3)
            self.memory: dict[int, int] = {}
            self.dirty, self.writable = 0, set()
            return {**ok, "pages": self.pages}
        if op == "write":
            for p in args["pages"]:
                self.memory[p] = (args["value"] + p if args["index"] else args["value"]) & 0xFFFFFFFF
                if p not in self.writable:          # the write faults: logged, then mapped writable
                    self.dirty |= (1 << p) if self.logging else 0
                    self.writable.add(p)
            return ok
        if op == "read":
            return {**ok, "values": [self.memory.get(p, 0) for p in args["pages"]]}
        if op == "get":
            bitmap = self.dirty
            if not self.manual:
                self.protect(bitmap)
                self.dirty = 0
            return {**ok, "bitmap": bitmap.to_bytes(bitmap_bytes(self.pages), "little").hex()}
        if op == "clear":
            first, num = args["first"], args["num"]
            asked = int.from_bytes(bytes.fromhex(args["bitmap"]), "little") & ((1 << num) - 1)
            cleared = (asked << first) & self.dirty
            self.dirty &= ~cleared
            self.protect(cleared)
            return ok
        if op == "destroy":
            return ok
        raise AssertionError(f"FakeKvm has no {op}")

    def protect(self, bits: int) -> None:
        for word in range(0, self.pages, WORD):
            mask = (bits >> word) & ((1 << WORD) - 1)
            if self.bug:
                mask &= 0xFFFFFFFF
            self.writable -= {word + i for i in range(WORD) if mask >> i & 1}


def machine_on(kvm: FakeKvm, monkeypatch: pytest.MonkeyPatch, pages: int) -> DirtyLogMachine:
    """The scenario's state machine on `kvm`, its VM created with logging on and manual protect."""
    monkeypatch.setattr(DirtyLogMachine, "session", Session(kvm), raising=False)  # type: ignore[arg-type]
    machine = DirtyLogMachine()
    machine.create(npages=pages, cap=1, logging=True, thp="never")
    return machine


def harvest_loop(kvm: FakeKvm, monkeypatch: pytest.MonkeyPatch, pages: int = 128) -> None:
    """dirty_log_test's loop: the L2 writes the slot, the log is harvested and cleared, three
    times, then one harvest round."""
    machine = machine_on(kvm, monkeypatch, pages)
    for value in (7, 9, 11):
        machine.write_all(value=value)
        machine.get_then_clear_all()
    machine.harvest(value=13)
    machine.teardown()


def test_write_all_finds_a_clear_that_left_pages_writable(monkeypatch):
    with pytest.raises(AssertionError, match=r"must be set .* are clear: pages \{32, 33, 34"):
        harvest_loop(FakeKvm(bug=True), monkeypatch)


def test_one_harvest_round_finds_it(monkeypatch):
    machine = machine_on(FakeKvm(bug=True), monkeypatch, 64)
    with pytest.raises(AssertionError, match=r"are clear: pages \{32, 33, 34"):
        machine.harvest(value=5)


def test_the_same_loop_passes_on_a_dirty_log_that_reprotects(monkeypatch):
    kvm = FakeKvm(bug=False)
    harvest_loop(kvm, monkeypatch)
    # The harvest's CLEAR protected every page again, so its second write was logged on every page.
    assert kvm.dirty == (1 << 128) - 1 and len(kvm.writable) == 128
