"""The get-put scenario's reading of guest output: nhctl getput's lines, the probe's get/put
records, and its check that the stream shows every call the plan made.  Bad data ends in a
GuestDataError (or GuestError) naming the source."""

from __future__ import annotations

import json

import pytest

from harness.errors import GuestError
from harness.events import RECORD, Callback, Event, Subscriber, parse_records
from harness.scenarios import SCENARIOS, SELF_TESTS
from harness.scenarios.get_put import EVENTS_FILE, OVERPUT_PLANS, PLANS, Plan, Step, parse_getput_output, \
    recorded_calls, run_plan
from tests.unit.test_hostile_guest import EXIT, START, guest, refused

PLAN = Plan("exit", ("get:2", "run", "get:1", "put:2", "sync"), hold=False, what="")
NHCTL_GETPUT = "/opt/nh/bin/nhctl getput"
STATS = ('{"op": "probe-stats", "written": 0, "dropped": 0, "read": 0, "attached_pid": 0, "pid": 5, '
         '"exit_status": %d, "signal": %d, "record_size": 64}')


def step(name: str, count: int = 0, ret: int = 0, errno: int = 0, sub_id: int = 1, users: int = 0,
         refs: int = 0) -> str:
    return json.dumps({"op": "gp-step", "step": name, "count": count, "ret": ret, "errno": errno, "sub_id": sub_id,
                       "users": users, "refs": refs})


GOOD_STEPS = [step("get", 2, users=2, refs=2), step("run", refs=2), step("get", 1, ret=-1, errno=3, refs=2),
              step("put", 2, refs=0), step("sync", sub_id=0)]


def output(steps=GOOD_STEPS, status=(0, 0), workload=(START, EXIT)) -> str:
    return "\n".join([steps[0], *workload, *steps[1:], STATS % status]) + "\n"


def test_the_plans_and_their_registration():
    assert SCENARIOS["get-put"].knobs == frozenset() and SCENARIOS["get-put-overput"].knobs == frozenset()
    assert "get-put-overput" in SELF_TESTS and "get-put" not in SELF_TESTS
    assert [p.name for p in PLANS] == ["refs", "exit-held", "exit"] and OVERPUT_PLANS[0].steps.count("overput") == 1
    assert PLANS[0].calls() == {"get": 6, "put": 5, "sync": 1, "run": 1, "unhold": 1}


def test_nhctl_output_in_order_is_read():
    steps, workload, stats = parse_getput_output(PLAN, output())
    assert [s.word() for s in steps] == list(PLAN.steps) and steps[2] == Step("get", 1, -1, 3, 1, 0, 2)
    assert [line["op"] for line in workload] == ["start", "exit"] and stats.exit_status == 0


@pytest.mark.parametrize("bad,problem", [
    (step("get", 2).replace('"get"', '"getx"'), "unknown step 'getx'"),
    (step("get", 2).replace('"count": 2', '"count": 65'), "'count'"),
    (step("get", 2).replace('"count": 2', '"count": true'), "'count' is not an integer"),
    (step("get", 2).replace('"ret": 0', '"ret": 5'), "'ret'"),
    (step("get", 2).replace('"errno": 0', '"errno": -2'), "'errno'"),
    (step("get", 2).replace('"sub_id": 1', '"sub_id": 4294967296'), "'sub_id'"),
    (step("get", 2).replace(', "refs": 0', ''), "no 'refs'"),
    (step("get", 2).replace('"step": "get"', '"step": ["get"]'), "'step' is not a str"),
])
def test_a_step_line_that_is_not_what_nhctl_prints(bad, problem):
    message = refused(lambda: parse_getput_output(PLAN, output([bad, *GOOD_STEPS[1:]])), "exit: nhctl getput")
    assert problem in message


def test_steps_other_than_the_plan_are_an_error():
    message = refused(lambda: parse_getput_output(PLAN, output(GOOD_STEPS[:-1])), "exit: nhctl getput")
    assert "ran the steps 'get:2 run get:1 put:2', not the plan's" in message
    swapped = [GOOD_STEPS[1], GOOD_STEPS[0], *GOOD_STEPS[2:]]
    refused(lambda: parse_getput_output(PLAN, output(swapped)), "exit: nhctl getput")


@pytest.mark.parametrize("text", ["", "\x00\xff binary\n", '{"op": "gp-step"\n', "[1]\n", "{" + '"a":' * 3000 + "\n"])
def test_output_that_is_not_json_lines(text):
    refused(lambda: parse_getput_output(PLAN, text), "exit: nhctl getput")


def test_a_last_line_that_is_not_the_counters():
    refused(lambda: parse_getput_output(PLAN, "\n".join(GOOD_STEPS) + "\n"), "exit: nhctl getput")


def test_nhctl_failure_and_a_failed_workload_are_errors():
    with pytest.raises(GuestError, match="exit: nhctl failed: NH_IOC_ATTACH: No such process"):
        parse_getput_output(PLAN, '{"error": "NH_IOC_ATTACH: No such process"}\n')
    crashed = output(status=(-1, 11), workload=(START, '{"op": "map", "error": "mmap: ENOMEM"}'))
    with pytest.raises(GuestError, match="exit: workload was killed by signal 11: mmap: ENOMEM"):
        parse_getput_output(PLAN, crashed)


def test_a_garbled_event_file_names_it(tmp_path):
    g = guest({NHCTL_GETPUT: output(), f"cat {EVENTS_FILE}": b"\x01" * 65})
    refused(lambda: run_plan(g, PLAN), f"exit: {EVENTS_FILE}")
    g = guest({NHCTL_GETPUT: output(), f"cat {EVENTS_FILE}": (1, "")})
    with pytest.raises(GuestError, match="reading /tmp/nh-getput.bin failed"):
        run_plan(g, PLAN)


def pack(seq: int, callback: Callback, subscriber: Subscriber, sub_id: int, event: int = 0) -> bytes:
    return RECORD.pack(seq, 1000 + seq, 0, 0, callback, event, 1, 0, 0, 5, subscriber, sub_id)


def test_records_carry_the_subscription_id_only_for_get_put():
    [rec] = parse_records(pack(1, Callback.START, Subscriber.GETPUT, 3, Event.CLEAR))
    assert rec.sub_id == 3 and rec.describe().endswith("[getput #3]")
    [get] = parse_records(pack(2, Callback.GET, Subscriber.GETPUT, 3))
    assert get.describe() == "#2 get #3 users 0 pid 5"   # a call of the probe: no subscriber tag
    for bad in (pack(1, Callback.START, Subscriber.PRIMARY, 3, Event.CLEAR), pack(1, Callback.GET, Subscriber.PRIMARY, 0),
                pack(1, Callback.FREE_NOTIFIER, Subscriber.INTERVAL, 0)):
        refused(lambda: parse_records(bad, "probe event stream"), "probe event stream")


def test_a_stream_without_the_plans_calls_is_a_finding():
    full = [pack(1, Callback.ALLOC_NOTIFIER, Subscriber.GETPUT, 1)]
    full += [pack(2 + i, Callback.GET, Subscriber.GETPUT, 1) for i in range(3)]
    full += [pack(5 + i, Callback.PUT, Subscriber.GETPUT, 1) for i in range(2)]
    full += [pack(7, Callback.SYNCHRONIZE, Subscriber.GETPUT, 0), pack(8, Callback.SYNCHRONIZE, Subscriber.GETPUT, 0)]
    assert recorded_calls(PLAN, parse_records(b"".join(full))) == []    # DETACH's extra synchronize is fine
    problems = recorded_calls(PLAN, parse_records(b"".join(full[:1] + full[2:5])))
    assert problems == ["exit: the probe recorded 2 get calls, the plan made 3: the stream does not show what was done",
                        "exit: the probe recorded 1 put calls, the plan made 2: the stream does not show what was done",
                        "exit: the probe recorded 0 synchronize calls, the plan made 1: the stream does not show what "
                        "was done"]
    assert any("no alloc_notifier" in p for p in recorded_calls(PLAN, []))
