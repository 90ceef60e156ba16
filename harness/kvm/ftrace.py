"""KVM's mmu notifier tracepoints (and two kprobes) recorded with ftrace in the guest.

The tracepoints are KVM's own account of its notifier callbacks
(kernel-semantics.md §4); the probe module's records are the other account.
`trace_clock` is set to `mono` so both carry CLOCK_MONOTONIC times.  KVM's
release and VM teardown have no tracepoint, so kprobes stand in for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import GuestError
from harness.events import KVM_EVENTS, TraceEvent, parse_trace
from harness.guest import Guest
from harness.guest_data import GuestDataError
from harness.tracefs import TRACING, split_collection

# kprobe event name -> the kernel function it watches (group "nh").
KPROBES = {"kvm_release": "kvm_mmu_notifier_release", "kvm_destroy": "kvm_destroy_vm"}
BUFFER_KB = 8192
STATS_END = "--nh-trace--"
# Removes this trace's own kprobes only: `echo > kprobe_events` would fail (EBUSY) while the
# call-site coverage's kprobes are enabled in their instance (harness/coverage.py).
_REMOVE_KPROBES = "".join(f'if [ -d events/nh/{name} ]; then echo 0 > events/nh/{name}/enable; '
                          f'echo "-:nh/{name}" >> kprobe_events; fi; ' for name in KPROBES)


@dataclass
class KvmTrace:
    """Start with start(); stop() returns the events.  One per scenario; always stop()."""

    guest: Guest
    events: tuple[str, ...] = ()       # the KVM tracepoints this kernel has
    kprobes: tuple[str, ...] = ()      # the kprobes that could be placed
    overruns: int = 0

    def start(self) -> None:
        script = (f'set -e; cd {TRACING}; echo 0 > tracing_on; echo > trace; echo mono > trace_clock; '
                  f'echo {BUFFER_KB} > buffer_size_kb; {_REMOVE_KPROBES}'
                  f'for e in {" ".join(KVM_EVENTS)}; do '
                  f'if [ -d events/kvm/$e ]; then echo 1 > events/kvm/$e/enable; echo "event $e"; fi; done; '
                  + "".join(f'if echo "p:nh/{name} {func}" >> kprobe_events 2>/dev/null; then '
                            f'echo 1 > events/nh/{name}/enable; echo "kprobe {name}"; fi; '
                            for name, func in KPROBES.items())
                  + "echo 1 > tracing_on")
        result = self.guest.run(["sh", "-c", script])
        if not result.ok:
            raise GuestError(f"setting up ftrace failed: {(result.stderr or result.stdout).strip()}")
        self.events, self.kprobes = parse_enabled(result.stdout)
        if not self.events:
            raise GuestError("the kernel has none of KVM's mmu notifier tracepoints (events/kvm/kvm_*_hva*)")

    def wait_for(self, event: str, timeout: float) -> bool:
        """Poll the trace, in the guest, until `event` shows up (one round trip); False if it does not."""
        tries = max(1, int(timeout / 0.2))
        script = (f'for i in $(seq {tries}); do grep -q " {event}:" {TRACING}/trace && exit 0; sleep 0.2; done; '
                  f'exit 1')
        return self.guest.run(["sh", "-c", script], timeout=timeout + 10).ok

    def stop(self) -> list[TraceEvent]:
        """Tracing off, the trace and the ring's overrun counts read in one round trip, then the
        kernel's defaults back (1408 KiB is the default buffer size)."""
        script = (f"cd {TRACING}; echo 0 > tracing_on; cat per_cpu/cpu*/stats; echo {STATS_END}; cat trace; "
                  f"echo 0 > events/enable; {_REMOVE_KPROBES}echo > trace; echo 1408 > buffer_size_kb")
        out = self.guest.check(["sh", "-c", script])
        self.overruns, trace = split_collection(out, TRACING, STATS_END, "ftrace")
        return parse_trace(trace, f"{TRACING}/trace")


def parse_enabled(out: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The set-up script's account of what it enabled: (tracepoints, kprobes).  It prints only
    `event NAME` and `kprobe NAME` lines, for names it was given."""
    events: list[str] = []
    kprobes: list[str] = []
    for line in out.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "event" and words[1] in KVM_EVENTS:
            events.append(words[1])
        elif len(words) == 2 and words[0] == "kprobe" and words[1] in KPROBES:
            kprobes.append(words[1])
        else:
            raise GuestDataError("ftrace set-up", "expected 'event NAME' or 'kprobe NAME'", line)
    return tuple(events), tuple(kprobes)
