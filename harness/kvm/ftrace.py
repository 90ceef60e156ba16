"""KVM's mmu notifier tracepoints (and two kprobes) recorded with ftrace in the guest.

The tracepoints are KVM's own account of its notifier callbacks
(kernel-semantics.md §4); the probe module's records are the other account.
`trace_clock` is set to `mono` so both carry CLOCK_MONOTONIC times.  KVM's
release and VM teardown have no tracepoint, so kprobes stand in for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from harness.errors import GuestError
from harness.events import KVM_EVENTS, TraceEvent, parse_overruns, parse_trace
from harness.guest import Guest

TRACING = "/sys/kernel/tracing"
# kprobe event name -> the kernel function it watches (group "nh").
KPROBES = {"kvm_release": "kvm_mmu_notifier_release", "kvm_destroy": "kvm_destroy_vm"}
BUFFER_KB = 8192

@dataclass
class KvmTrace:
    """Start with start(); stop() returns the events.  One per scenario; always stop()."""

    guest: Guest
    events: tuple[str, ...] = ()       # the KVM tracepoints this kernel has
    kprobes: tuple[str, ...] = ()      # the kprobes that could be placed
    overruns: int = 0

    def start(self) -> None:
        script = (f'set -e; cd {TRACING}; echo 0 > tracing_on; echo > trace; echo mono > trace_clock; '
                  f'echo {BUFFER_KB} > buffer_size_kb; echo > kprobe_events; '
                  f'for e in {" ".join(KVM_EVENTS)}; do '
                  f'if [ -d events/kvm/$e ]; then echo 1 > events/kvm/$e/enable; echo "event $e"; fi; done; '
                  + "".join(f'if echo "p:nh/{name} {func}" >> kprobe_events 2>/dev/null; then '
                            f'echo 1 > events/nh/{name}/enable; echo "kprobe {name}"; fi; '
                            for name, func in KPROBES.items())
                  + "echo 1 > tracing_on")
        result = self.guest.run(["sh", "-c", script])
        if not result.ok:
            raise GuestError(f"setting up ftrace failed: {(result.stderr or result.stdout).strip()}")
        words = [line.split() for line in result.stdout.splitlines()]
        self.events = tuple(w[1] for w in words if w[0] == "event")
        self.kprobes = tuple(w[1] for w in words if w[0] == "kprobe")
        if not self.events:
            raise GuestError("the kernel has none of KVM's mmu notifier tracepoints (events/kvm/kvm_*_hva*)")

    def snapshot(self) -> str:
        return self.guest.read_text(f"{TRACING}/trace")

    def stop(self) -> list[TraceEvent]:
        script = (f"cd {TRACING}; echo 0 > tracing_on; cat per_cpu/cpu*/stats > /tmp/nh-trace-stats; "
                  f"cat trace; echo 0 > events/enable; echo > kprobe_events; echo > trace; "
                  f"echo 1408 > buffer_size_kb")
        result = self.guest.run(["sh", "-c", script])
        self.overruns = parse_overruns(self.guest.read_text("/tmp/nh-trace-stats"))
        return parse_trace(result.stdout)


def first_event(events: list[TraceEvent], name: str) -> Optional[TraceEvent]:
    return next((e for e in events if e.name == name), None)
