"""Operation families register their operations, expectations and judged call sites without
touching a shared table; the parser reads a family's fields like any other, untrusted."""

import pytest

from harness.guest_data import GuestDataError
from harness.model import ops as ops_mod
from harness.model.expect import _EXPECT, Expectation, register_expectation
from harness.model.ops import FAMILY_OPS, parse_ops, register_op


@pytest.fixture
def demo_family(monkeypatch):
    monkeypatch.setattr(ops_mod, "FAMILY_OPS", dict(FAMILY_OPS))
    monkeypatch.setitem(_EXPECT, "__probe_sentinel__", lambda op, aspace, f: Expectation(op))
    register_op("demo-move", ints=("new_start", "new_end"))
    return ops_mod.FAMILY_OPS


def test_a_family_operation_is_parsed_with_its_fields(demo_family):
    lines = [{"op": "start", "pid": 9, "t0": 1},
             {"op": "demo-move", "t0": 2, "t1": 3, "start": 0x7e0000000000, "end": 0x7e0000200000,
              "new_start": 0x7f0000000000, "new_end": 0x7f0000200000}]
    _, [op] = parse_ops(lines)
    assert op.kind == "demo-move" and op.extra == {"new_start": 0x7f0000000000, "new_end": 0x7f0000200000}


@pytest.mark.parametrize("bad", [{"new_start": "x"}, {"new_start": 2**70}, {}])
def test_a_family_field_is_guest_data(demo_family, bad):
    line = {"op": "demo-move", "t0": 2, "t1": 3, "start": 4096, "end": 8192, "new_start": 1, "new_end": 2}
    line.update(bad)
    if not bad:
        del line["new_end"]
    with pytest.raises(GuestDataError):
        parse_ops([{"op": "start", "pid": 9, "t0": 1}, line])


def test_declaring_an_operation_twice_is_refused(demo_family):
    with pytest.raises(ValueError):
        register_op("demo-move")
    with pytest.raises(ValueError):
        register_op("munmap")
    with pytest.raises(ValueError):
        register_expectation("munmap", lambda op, aspace, f: Expectation(op))
