"""The get/put rules (docs/get-put.md), each with the kernel's trace and one that breaks it.

A trace is what the probe records: its get/put calls (on nhctl's task), the
subscription's alloc_notifier/free_notifier, and every callback twice, once
for the get/put subscription (called first: it is newer on the mm's list) and
once for the reference notifier registered before it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from harness.events import Callback, Event, Subscriber
from harness.model.get_put import judge_get_put
from tests.unit.tracebuilder import A, PID, TraceBuilder

NHCTL = 90          # the task that makes the probe's get/put calls
ESRCH = 3
CLEAR, UNMAP = Event.CLEAR, Event.UNMAP
GP, REF = Subscriber.GETPUT, Subscriber.PRIMARY


class GetPutTrace(TraceBuilder):
    def gp(self, callback: Callback, sub_id: int, end: int = 0, ret: int = 0, pid: int = NHCTL,
           **kw) -> "GetPutTrace":
        self.add(callback, end=end, ret=ret, pid=pid, subscriber=GP, **kw)
        self.records[-1] = replace(self.records[-1], sub_id=sub_id)
        return self

    def alloc(self, sub_id: int = 1) -> "GetPutTrace":
        return self.gp(Callback.ALLOC_NOTIFIER, sub_id)

    def free(self, sub_id: int = 1) -> "GetPutTrace":
        return self.gp(Callback.FREE_NOTIFIER, sub_id)

    def get(self, sub_id: int = 1, users: int = 1) -> "GetPutTrace":
        return self.gp(Callback.GET, sub_id, end=users)

    def refused(self, ret: int = -ESRCH) -> "GetPutTrace":
        return self.gp(Callback.GET, 0, ret=ret)

    def put(self, sub_id: int = 1, users: int = 1) -> "GetPutTrace":
        return self.gp(Callback.PUT, sub_id, end=users)

    def sync(self) -> "GetPutTrace":
        return self.gp(Callback.SYNCHRONIZE, 0)

    def gets(self, n: int, sub_id: int = 1) -> "GetPutTrace":
        """n gets of a subscription nobody holds: alloc_notifier with the first."""
        self.alloc(sub_id)
        for users in range(1, n + 1):
            self.get(sub_id, users)
        return self

    def puts(self, n: int, sub_id: int = 1) -> "GetPutTrace":
        for users in range(n, 0, -1):
            self.put(sub_id, users)
        return self

    def call(self, callback: Callback, start: int = 0, end: int = 0, event: Optional[Event] = None,
             sub_id: Optional[int] = 1, pid: int = PID) -> "GetPutTrace":
        """One core call as both subscribers see it (sub_id None: the subscription is not on the list)."""
        if sub_id is not None:
            self.gp(callback, sub_id, end=end, pid=pid, start=start, event=event)
        self.add(callback, start, end, event, pid=pid, subscriber=REF)
        return self

    def window(self, event: Event, start: int, end: int, sub_id: Optional[int] = 1, ir: bool = False,
               **kw) -> "GetPutTrace":
        """start, then end; with `ir`, 6.1's end: each subscriber gets invalidate_range and its end."""
        self.call(Callback.START, start, end, event, sub_id)
        if not ir:
            return self.call(Callback.END, start, end, event, sub_id)
        if sub_id is not None:
            self.gp(Callback.INVALIDATE_RANGE, sub_id, end=end, pid=PID, start=start)
            self.gp(Callback.END, sub_id, end=end, pid=PID, start=start, event=event)
        self.add(Callback.INVALIDATE_RANGE, start, end, pid=PID, subscriber=REF)
        self.add(Callback.END, start, end, event, pid=PID, subscriber=REF)
        return self

    def exit(self, sub_id: Optional[int] = 1, pid: int = PID) -> "GetPutTrace":
        """exit_mmap's release pass: the subscription first (if on the list), then the reference."""
        return self.call(Callback.RELEASE, sub_id=sub_id, pid=pid)


def rules(tb: TraceBuilder) -> list[str]:
    return [f.rule for f in judge_get_put(tb.records).findings]


def messages(tb: TraceBuilder, rule: str) -> list[str]:
    return [f.message for f in judge_get_put(tb.records).findings if f.rule == rule]


def refs_trace() -> GetPutTrace:
    """The `refs` plan as the kernel answers it: 3 gets, the workload's windows (each delivered once),
    3 puts, free_notifier after the last, synchronize; a new subscription for a get after that."""
    tb = GetPutTrace().gets(3)
    tb.window(CLEAR, A, A + 0x10000).window(UNMAP, A + 0x80000, A + 0x90000, ir=True)
    tb.puts(3).free(1).sync()
    tb.gets(2, sub_id=2).puts(2, sub_id=2).free(2).sync()
    return tb.exit(sub_id=None).refused()   # the exit releases only the reference notifier


def exit_trace() -> GetPutTrace:
    """The `exit` plan: the mm exits with 2 references held, a get after that is refused."""
    tb = GetPutTrace().gets(2).window(CLEAR, A, A + 0x10000).exit(sub_id=1)
    return tb.refused().puts(2).free(1).sync()


def test_the_specification_traces_pass():
    assert rules(refs_trace()) == []
    assert rules(exit_trace()) == []
    j = judge_get_put(exit_trace().records)
    [sub] = j.subscriptions
    assert sub.release is not None and sub.free is not None and j.exit is not None
    assert sub.release.seq < j.exit.seq < sub.last_put.seq < sub.free.seq   # type: ignore[union-attr]


# --- gp-get: one alloc_notifier for N gets, one subscription -----------------------------------

def test_an_alloc_notifier_per_get_fails():
    tb = GetPutTrace().alloc(1).get(1, 1).alloc(2).get(2, 1).puts(1, 2).puts(1, 1).free(2).free(1).sync()
    found = messages(tb, "gp-get")
    assert any("alloc_notifier (#2) while subscription #1 holds 1 references" in m for m in found)
    assert any("returned #2 while #1 is referenced" in m for m in found)


def test_a_get_without_alloc_notifier_fails():
    tb = GetPutTrace().get(1, 1)
    assert rules(tb) == ["gp-identity"]
    tb = GetPutTrace().gets(1).puts(1).free(1).get(1, 1)
    assert "gp-identity" in rules(tb)     # after its free_notifier, the id names nothing


def test_a_get_of_a_subscription_already_put_fails():
    tb = GetPutTrace().gets(1).puts(1).get(1, 1).puts(1).free(1).sync()
    assert any("again after the put of its last reference" in m for m in messages(tb, "gp-get"))


def test_the_users_count_must_be_gets_minus_puts():
    tb = GetPutTrace().alloc(1).get(1, 1).get(1, 1).puts(2).free(1).sync()
    assert any("users is 1 after this get of #1, but it has had 2" in m for m in messages(tb, "gp-get"))


def test_a_get_that_fails_on_a_live_mm_fails_and_must_free_what_it_allocated():
    freed = GetPutTrace().alloc(1).free(1).refused(ret=-12)
    assert rules(freed) == ["gp-get"] and "failed with -12 on an mm that has not exited" in messages(freed, "gp-get")[0]
    leaked = GetPutTrace().alloc(1).refused(ret=-12)
    assert any("which was not freed" in m for m in messages(leaked, "gp-get"))


# --- gp-refused: no get after the exit began ---------------------------------------------------

def test_a_get_after_the_exit_must_be_refused():
    assert rules(GetPutTrace().gets(1).exit().refused().puts(1).free(1).sync()) == []
    tb = GetPutTrace().gets(1).exit().get(1, 2).puts(2).free(1).sync()
    assert messages(tb, "gp-refused") == ["a get succeeded after the mm's exit (#4): __mmu_notifier_register "
                                          "needs mm_users > 0"]
    tb = GetPutTrace().exit(sub_id=None).alloc(1).get(1, 1).puts(1).free(1)
    assert rules(tb).count("gp-refused") == 2      # the alloc_notifier, and the get


# --- gp-identity ------------------------------------------------------------------------------

def test_callbacks_name_a_live_subscription():
    tb = GetPutTrace().gets(1).window(CLEAR, A, A + 0x1000, sub_id=7).puts(1).free(1).sync()
    assert "gp-identity" in rules(tb)
    tb = GetPutTrace().gets(1).puts(1).free(1).gp(Callback.START, 1, start=A, end=A + 0x1000, event=CLEAR)
    assert any("after its free_notifier" in m for m in messages(tb, "gp-identity"))


# --- gp-once: each event once, not once per reference ------------------------------------------

def test_an_event_delivered_once_per_reference_fails():
    tb = GetPutTrace().gets(2)
    tb.gp(Callback.START, 1, start=A, end=A + 0x1000, event=CLEAR, pid=PID)   # the subscription, twice
    tb.window(CLEAR, A, A + 0x1000)
    tb.puts(2).free(1).sync()
    assert rules(tb) == ["gp-once"]


def test_an_event_the_subscription_missed_fails():
    tb = GetPutTrace().gets(1).window(CLEAR, A, A + 0x1000, sub_id=None).puts(1).free(1).sync()
    assert rules(tb) == ["gp-once", "gp-once"]     # its start and its end reached only the reference
    # Once its last put took it off the list, the reference alone is right.
    assert rules(GetPutTrace().gets(1).puts(1).window(CLEAR, A, A + 0x1000, sub_id=None).free(1).sync()) == []


def test_the_subscription_and_the_reference_must_see_the_same_call():
    tb = GetPutTrace().gets(1)
    tb.gp(Callback.START, 1, start=A, end=A + 0x2000, event=CLEAR, pid=PID)
    tb.add(Callback.START, A, A + 0x1000, CLEAR, subscriber=REF)
    tb.call(Callback.END, A, A + 0x1000, CLEAR)
    tb.puts(1).free(1).sync()
    assert "gp-once" in rules(tb)


def test_6_1_end_groups_per_subscriber():
    # mn_hlist_invalidate_end: invalidate_range then end for each subscriber in turn.
    assert rules(GetPutTrace().gets(1).window(CLEAR, A, A + 0x1000, ir=True).puts(1).free(1).sync()) == []


# --- gp-put: a put needs a reference -----------------------------------------------------------

def test_a_put_once_too_often_is_named():
    tb = GetPutTrace().gets(2).puts(2).put(1, 0).free(1).sync()
    assert messages(tb, "gp-put") == ["a put of #1 with no reference left (every get was already put): "
                                      "mmu_notifier_put WARNs on users == 0"]
    late = GetPutTrace().gets(2).puts(2).free(1).put(1, 0).sync()
    assert rules(late) == ["gp-put"] and "after its free_notifier" in messages(late, "gp-put")[0]


def test_a_put_must_see_the_users_count_of_gets_minus_puts():
    tb = GetPutTrace().gets(2).put(1, 5).put(1, 1).free(1).sync()
    assert any("users is 5 before this put of #1" in m for m in messages(tb, "gp-put"))


# --- gp-free and gp-synchronize ----------------------------------------------------------------

def test_free_notifier_before_the_last_put_fails():
    tb = GetPutTrace().gets(2).put(1, 2).free(1).put(1, 1).sync()
    assert messages(tb, "gp-free") == ["free_notifier of #1 while it holds 1 references"]


def test_free_notifier_twice_or_never_put_fails():
    assert "gp-free" in rules(GetPutTrace().gets(1).puts(1).free(1).free(1).sync())
    tb = GetPutTrace().alloc(1).get(1, 1).put(1, 1).free(1).sync()
    assert rules(tb) == []
    never_put = GetPutTrace().gets(1)
    never_put.records.pop()           # the get is lost: alloc_notifier, then free_notifier with no put
    assert rules(never_put.free(1)) == []        # a get whose registration failed frees at once ...
    assert "gp-free" in rules(GetPutTrace().gets(1).sync().free(1).sync())   # ... a held one never


def test_free_notifier_must_run_before_synchronize_returns():
    tb = GetPutTrace().gets(1).puts(1).sync().free(1)
    assert messages(tb, "gp-synchronize") == ["mmu_notifier_synchronize() returned (#4) before free_notifier of #1, "
                                              "whose last put was #3"]
    never = GetPutTrace().gets(1).puts(1).sync()
    assert rules(never) == ["gp-synchronize"]
    # Before the last put, a synchronize owes nothing.
    assert rules(GetPutTrace().gets(2).put(1, 2).sync().put(1, 1).free(1).sync()) == []


# --- gp-release: once at exit while referenced, never from a put ---------------------------------

def test_an_exit_while_referenced_must_release_the_subscription():
    tb = GetPutTrace().gets(2).exit(sub_id=None).refused().puts(2).free(1).sync()
    assert any("the mm exited (#4) while #1 held 2 references, but its release never came" in m
               for m in messages(tb, "gp-release"))


def test_a_release_without_a_reference_fails():
    # put never calls release: a release right after the last put is wrong ...
    tb = GetPutTrace().gets(1).puts(1)
    tb.gp(Callback.RELEASE, 1, pid=NHCTL)
    tb.free(1).sync()
    assert any("which holds no reference: mmu_notifier_put never calls release" in m
               for m in messages(tb, "gp-release"))
    # ... and so is one at an exit after the last put.
    tb = GetPutTrace().gets(1).puts(1).free(1).sync().exit(sub_id=1)
    assert "gp-identity" in rules(tb)   # freed: the id names nothing any more
    tb = GetPutTrace().gets(1).puts(1).exit(sub_id=1).free(1).sync()
    assert "gp-release" in rules(tb)


def test_release_twice_or_callbacks_after_it_fail():
    tb = GetPutTrace().gets(1)
    tb.gp(Callback.RELEASE, 1, pid=PID)
    tb.exit(sub_id=1).puts(1).free(1).sync()
    assert any("release of #1 again" in m for m in messages(tb, "gp-release"))
    tb = GetPutTrace().gets(1).exit(sub_id=1)
    tb.gp(Callback.START, 1, start=A, end=A + 0x1000, event=CLEAR, pid=PID)
    tb.puts(1).free(1).sync()
    assert any("start of #1 after its release" in m for m in messages(tb, "gp-release"))


def test_a_release_with_no_exit_of_the_mm_fails():
    tb = GetPutTrace().gets(1)
    tb.gp(Callback.RELEASE, 1, pid=PID)
    tb.puts(1).free(1).sync()
    assert any("with no exit of the mm" in m for m in messages(tb, "gp-release"))
