"""The memslot scenario without a guest: minivmm's answers are parsed at the guest-data boundary, and
the exploration (hypothesis, shrinking, the minimal sequence) runs against a stand-in VMM."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Optional

import pytest

from harness.guest_data import GuestDataError
from harness.model.memslot import MemslotModel, Region
from harness.scenarios.exploration import SHRINK_RESERVE_S
from harness.scenarios.memslot import ARENA_PAGES, Answer, explore

ARENA = 0x7F0000000000


# --- parsing -----------------------------------------------------------------------

def create_answer(**override: Any) -> dict[str, Any]:
    answer = {"op": "create", "ret": 0, "errno": 0, "arena": ARENA, "arena_pages": ARENA_PAGES,
              "maxphyaddr": 40, "tdp": 1, "address_spaces": 2}
    answer.update(override)
    return answer


def test_create_gives_the_gpa_bound_and_address_spaces():
    a = Answer.parse("create", create_answer())
    assert (a.arena, a.max_gpa_bits, a.address_spaces) == (ARENA, 40, 2)
    assert Answer.parse("create", create_answer(tdp=0)).max_gpa_bits == 52      # no TDP: 52 bits
    assert Answer.parse("create", create_answer(address_spaces=0)).address_spaces == 1   # no capability


@pytest.mark.parametrize("bad,named", [
    (create_answer(tdp=-1), "'tdp'"), (create_answer(maxphyaddr=64), "'maxphyaddr'"),
    (create_answer(address_spaces=3), "'address_spaces'"), (create_answer(arena_pages=1), "arena"),
    ({k: v for k, v in create_answer().items() if k != "arena"}, "'arena'"),
])
def test_bad_create_answers_name_the_field(bad, named):
    with pytest.raises(GuestDataError, match=named) as e:
        Answer.parse("create", bad)
    assert "minivmm create" in str(e.value)


def test_exits_are_typed():
    a = Answer.parse("load", {"op": "load", "ret": 0, "errno": 0, "values": [7],
                              "exits": [{"addr": 4096, "len": 4, "write": 0, "data": 0}]})
    assert a.values == (7,) and a.exits[0].addr == 4096 and not a.exits[0].write


@pytest.mark.parametrize("exits", [
    "nope", [1], [{"addr": 1, "len": 4, "write": 2, "data": 0}], [{"addr": -1, "len": 4, "write": 0, "data": 0}],
    [{"addr": 1, "len": 9, "write": 0, "data": 0}], [{"addr": 1, "len": 4, "write": 0}],
    [{"addr": 1, "len": 4, "write": 0, "data": 0}] * 65,
])
def test_bad_exits_are_guest_data_errors(exits):
    with pytest.raises(GuestDataError, match="minivmm store"):
        Answer.parse("store", {"op": "store", "ret": 0, "errno": 0, "exits": exits})


# --- exploration against a stand-in -------------------------------------------------

@dataclass
class StandIn:
    """A VMM that answers as the kernel's rules say (a second model instance plays the kernel), so the
    exploration's plumbing and shrinking can be tested without a guest; `skip_delete` is minivmm's
    --corrupt skip-delete."""

    skip_delete: bool = False
    guest: Any = field(default_factory=lambda: SimpleNamespace(deadline=None))   # no time limit
    transcript: Optional[Any] = None
    last_request: str = ""
    kernel: Optional[MemslotModel] = None
    made: set[int] = field(default_factory=set)
    skipped: bool = False

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.last_request = json.dumps({"op": op, **args})
        answer: dict[str, Any] = {"op": op, "ret": 0, "errno": 0}
        if op == "create":
            self.kernel, self.made, self.skipped = MemslotModel(ARENA, ARENA_PAGES * 4096, 40), set(), False
            answer.update(create_answer())
        elif op == "region":
            assert self.kernel
            hva = ARENA + args["offset"] if "offset" in args else args["hva"]
            r = Region(args["slot"], args["flags"], args["gpa"], args["size"], hva)
            if self.skip_delete and not self.skipped and r.size == 0 and r.slot in self.made:
                self.skipped = True
                self.made.discard(r.slot)
                return answer
            outcome = self.kernel.outcome(r)
            if outcome.errno:
                answer.update(ret=-1, errno=outcome.errno)
            else:
                self.kernel.apply(r, outcome)
                (self.made.add if r.size else self.made.discard)(r.slot)
        elif op == "load":
            assert self.kernel
            values, exits = self.kernel.expect_load(args["gpas"], args["size"], args["fill"])
            answer.update(values=values, exits=[exit_json(e) for e in exits])
        elif op == "store":
            assert self.kernel
            exits = self.kernel.expect_store(args["gpas"], args["size"], args["value"])
            self.kernel.store(args["gpas"], args["size"], args["value"])
            answer["exits"] = [exit_json(e) for e in exits]
        elif op == "stats":
            answer["stats"] = {"pf_mmio_spte_created": 1, "mmio_exits": 2}
        return answer


def exit_json(e: Any) -> dict[str, int]:
    return {"addr": e.addr, "len": e.length, "write": int(e.write), "data": e.data}


def test_a_faithful_vmm_passes():
    result, session = explore(StandIn(), run_seed=1, examples=40)   # type: ignore[arg-type]
    assert result.failure is None, result.failure
    assert session.outcomes.get("create", 0) > 0 and session.outcomes.get("delete", 0) > 0
    assert session.outcomes.get("EINVAL", 0) > 0 and session.exits > 0


def test_a_vmm_that_skips_a_delete_fails_with_a_short_sequence_naming_it():
    result, _ = explore(StandIn(skip_delete=True), run_seed=1)   # type: ignore[arg-type]
    assert result.failure is not None and "was deleted" in result.failure
    assert result.first_failure_s is not None and result.first_failure_example >= 1
    ops = [json.loads(r) for r in result.requests]
    assert ops[0]["op"] == "create" and any(r["op"] == "region" and r["size"] == 0 for r in ops)
    assert len(ops) <= 8, ops


def test_shrinking_stops_at_the_time_limit_with_the_shortest_failing_sequence():
    # A time limit SHRINK_RESERVE_S away leaves no time to shrink: the first failing example is the repro.
    vmm = StandIn(skip_delete=True, guest=SimpleNamespace(deadline=time.monotonic() + SHRINK_RESERVE_S))
    result, session = explore(vmm, run_seed=1)   # type: ignore[arg-type]
    assert session.shrink_stopped and result.failure is not None and "was deleted" in result.failure
    assert result.report.startswith("shrinking stopped after") and result.first_failure_s is not None
    assert list(result.requests) == session.shortest[1] and json.loads(result.requests[0])["op"] == "create"
