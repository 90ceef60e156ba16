"""KVM's halt-polling tracepoints (kvm:kvm_halt_poll_ns, kvm:kvm_vcpu_wakeup) recorded in a tracefs
instance of their own, `nh-halt`: apart from the call-site coverage's `nh-cov` and from the
top-level buffer harness/kvm/ftrace.py uses, so neither disturbs the other.

What ftrace prints for them (docs/halt-poll.md §3; 6.12.117 cloud kernel, trace_clock mono):

    minivmm-190 [000] .....  3.569914: kvm_halt_poll_ns: vcpu 0: halt_poll_ns 10000 (grow 0)
    minivmm-190 [000] .....  3.570219: kvm_vcpu_wakeup: wait time 459278 ns, polling valid

The trace is guest text: a line that is not one of these is an error, and so is an event lost to
a full buffer (the model would read a missing change as a kernel that skipped it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import GuestError
from harness.guest import Guest
from harness.guest_data import PID_MAX, GuestDataError, parse_int
from harness.model.halt_poll import PollChange, TraceItem, Wakeup
from harness.tracefs import (HEADER, EventLines, collect_script, event_lines, instance_path, make_script,
                             remove_script, split_collection)

INSTANCE = instance_path("nh-halt")
EVENTS = ("kvm_halt_poll_ns", "kvm_vcpu_wakeup")
BUFFER_KB = 1024
STATS_END = "--nh-halt--"
MAX_LINE = 512
S64_MAX = (1 << 63) - 1
U32_MAX = (1 << 32) - 1

# Our events off in our instance, the instance gone (only ours: nothing else uses it).  The events
# are KVM's tracepoints: there are no kprobes to delete.
_CLEAN = remove_script(INSTANCE, "kvm", ())
# The instance, fresh, with both events on.
SETUP_SCRIPT = (
    _CLEAN
    + make_script(BUFFER_KB)
    + f'for e in {" ".join(EVENTS)}; do [ -e "$I/events/kvm/$e/enable" ] || {{ echo "no kvm:$e" >&2; exit 3; }}; '
    + 'echo 1 > "$I/events/kvm/$e/enable" || exit 1; done'
)
COLLECT_SCRIPT = collect_script(INSTANCE, STATS_END)
TEARDOWN_SCRIPT = _CLEAN + "true"

_HEADER = re.compile(HEADER + r"(?P<event>\w{1,32}):\s+(?P<msg>.*)$", re.ASCII)
_POLL_NS = re.compile(r"vcpu (?P<vcpu>\d{1,10}): halt_poll_ns (?P<new>\d{1,10}) \((?P<kind>grow|shrink) "
                      r"(?P<old>\d{1,10})\)", re.ASCII)
_WAKEUP = re.compile(r"(?P<how>wait|poll) time (?P<ns>-?\d{1,20}) ns, polling (?P<valid>valid|invalid)", re.ASCII)
_LINES = EventLines(_HEADER, EVENTS, MAX_LINE, lost="a missing change would be guessed",
                    too_long="a line longer than any halt-polling event",
                    not_event="not a kvm_halt_poll_ns or kvm_vcpu_wakeup event")


@dataclass(frozen=True)
class Traced:
    """One event of the trace with the task that ran it."""

    pid: int
    item: TraceItem


def parse_halt_trace(text: str, source: str = "halt-poll trace", first_line: int = 0) -> list[Traced]:
    """The instance's `trace` file: one Traced per event, in order; `first_line` numbers them on
    from an earlier collection."""
    out: list[Traced] = []
    for line, m in event_lines(text, source, _LINES):
        pid = parse_int(m["pid"], source, lo=0, hi=PID_MAX)
        out.append(Traced(pid, _item(m["event"], m["msg"], first_line + len(out), line, source)))
    return out


def _item(event: str, msg: str, index: int, line: str, source: str) -> TraceItem:
    if event == "kvm_halt_poll_ns":
        m = _POLL_NS.fullmatch(msg.strip())
        if m is None:
            raise GuestDataError(source, "not what kvm_halt_poll_ns prints", line)
        return PollChange(vcpu=parse_int(m["vcpu"], source, lo=0, hi=U32_MAX),
                          new=parse_int(m["new"], source, lo=0, hi=U32_MAX),
                          old=parse_int(m["old"], source, lo=0, hi=U32_MAX), grow=m["kind"] == "grow", line=index)
    m = _WAKEUP.fullmatch(msg.strip())
    if m is None:
        raise GuestDataError(source, "not what kvm_vcpu_wakeup prints", line)
    # %lld of a u64 difference of two ktime_get()s: never negative.
    return Wakeup(ns=parse_int(m["ns"], source, lo=0, hi=S64_MAX), waited=m["how"] == "wait",
                  valid=m["valid"] == "valid", line=index)


class HaltTrace:
    """The instance: start(), collect() after each batch of halts, always stop()."""

    def __init__(self, guest: Guest):
        self.guest = guest
        self.lines = 0          # events collected so far, to number the next ones

    def start(self) -> None:
        result = self.guest.run(["sh", "-c", SETUP_SCRIPT])
        if not result.ok:
            raise GuestError(f"setting up the {INSTANCE} trace failed: {(result.stderr or result.stdout).strip()}")

    def collect(self) -> list[Traced]:
        out = self.guest.check(["sh", "-c", COLLECT_SCRIPT])
        overruns, trace = split_collection(out, INSTANCE, STATS_END, f"{INSTANCE} collection")
        if overruns:
            raise GuestError(f"ftrace lost {overruns} halt-polling events to a full buffer; the model would judge "
                             f"an incomplete trace")
        events = parse_halt_trace(trace, f"{INSTANCE}/trace", self.lines)
        self.lines += len(events)
        return events

    def stop(self) -> None:
        self.guest.run(["sh", "-c", TEARDOWN_SCRIPT])
