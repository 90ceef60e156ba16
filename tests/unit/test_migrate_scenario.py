"""The migrate scenario reads mmops's list of moved pages as untrusted guest data: outside the
mapping, unaligned, not what the count says, or not a list of integers is an error naming the
source; a guest with one NUMA node skips it with the reason."""

import pytest

from harness.scenarios.migrate import Migrate
from tests.unit.test_hostile_guest import MAP, NHCTL_RUN, PARAMS, A, context, guest, refused, workload

NODES = "ls /sys/devices/system/node"
F = A, A + (64 << 10)


def compact(moved: object, count: int) -> str:
    return ('{"op": "compact", "name": "A", "start": %d, "end": %d, "moved_pages": %s, "pages": 16, "moved": %d, '
            '"bad_pages": 0, "t_read0": 3, "t_read1": 8, "t0": 4, "t1": 7}' % (*F, moved, count))


@pytest.mark.parametrize("moved,count", [
    (f"[{A + (64 << 10)}]", 1),          # past the mapping's end
    (f"[{A + 8}]", 1),                   # not a page address
    (f"[{A}, {A + 4096}]", 1),           # not as many as it says
    ('"all"', 0),                        # not a list
    ('[true]', 1),
])
def test_a_bad_list_of_moved_pages_is_an_error(tmp_path, moved, count):
    g = guest({f"{PARAMS}/corrupt": "0\n", NODES: "node0\nnode1\npossible\n",
               NHCTL_RUN: workload(MAP % F, compact(moved, count))})
    refused(lambda: Migrate().run(context(g, "migrate", tmp_path)), "compact: mmops")


def test_one_node_is_a_skip_with_the_reason(tmp_path):
    g = guest({NODES: "node0\npossible\n"})
    verdict = Migrate().run(context(g, "migrate", tmp_path))
    assert verdict.status == "skip" and "1 NUMA node(s)" in verdict.findings[0]


def test_a_good_list_is_judged(tmp_path):
    g = guest({f"{PARAMS}/corrupt": "0\n", NODES: "node0\nnode1\n", NHCTL_RUN: workload(MAP % F, compact(f"[{A}]", 1))})
    verdict = Migrate().run(context(g, "migrate", tmp_path))
    # no records at all: the moved page had no window
    assert verdict.status == "fail" and any("changed frame without a CLEAR window" in f for f in verdict.findings)
