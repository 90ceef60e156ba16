"""Halt polling's per-vCPU window, from docs/halt-poll.md (virt/kvm/kvm_main.c `kvm_vcpu_halt`,
`grow_halt_poll_ns`, `shrink_halt_poll_ns`, `update_halt_poll_stats`: the same code in 6.1 and
6.12; only `halt_poll_ns_shrink`'s default differs).

Pure: the model is told the parameters in force and KVM's own trace of one vCPU
(`kvm_halt_poll_ns` for each change of its window, `kvm_vcpu_wakeup` for each
halt, with the halt's duration), and says which change is wrong.  Every
decision KVM makes depends on the halt's duration only through the `halt_ns` it
traces, so the model judges each transition given the measured duration and
never an absolute time: TCG makes those slow and noisy.

It holds the window (`vcpu->halt_poll_ns`) as KVM must have it: 0 for a new
vCPU, clamped silently to the maximum at each halt's entry, zeroed silently
when the maximum is 0, and otherwise changed only by the traced grow or shrink
of the halt it precedes.  After a finding it takes the kernel's value, so one
wrong step is one finding.  Along the way it counts what the vCPU's halt
statistics must say (`StatsExpectation`), and `check_stats` compares.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

from harness.model.findings import Finding

U32_MAX = (1 << 32) - 1
HIST_BUCKETS = 32          # HALT_POLL_HIST_COUNT

# The module's defaults by version (docs/halt-poll.md §1): (halt_poll_ns, grow, grow_start, shrink).
DEFAULTS: Mapping[tuple[int, int], tuple[int, int, int, int]] = {
    (6, 1): (200000, 2, 10000, 0),
    (6, 12): (200000, 2, 10000, 2),
}


@dataclass(frozen=True)
class Params:
    """The kvm module's halt-polling parameters, as the model is told them."""

    halt_poll_ns: int           # the module's maximum window
    grow: int
    grow_start: int
    shrink: int

    def describe(self) -> str:
        return (f"halt_poll_ns {self.halt_poll_ns}, halt_poll_ns_grow {self.grow}, "
                f"halt_poll_ns_grow_start {self.grow_start}, halt_poll_ns_shrink {self.shrink}")


@dataclass(frozen=True)
class Wakeup:
    """kvm_vcpu_wakeup: one kvm_vcpu_halt ended."""

    ns: int                     # halt_ns: polling and waiting
    waited: bool                # "wait" (scheduled out) or "poll"
    valid: bool
    line: int = 0               # where in the trace, for findings

    def describe(self) -> str:
        return (f"kvm_vcpu_wakeup {'wait' if self.waited else 'poll'} {self.ns} ns"
                f"{'' if self.valid else ', invalid'}")


@dataclass(frozen=True)
class PollChange:
    """kvm_halt_poll_ns: grow_halt_poll_ns or shrink_halt_poll_ns ran."""

    vcpu: int
    new: int
    old: int
    grow: bool
    line: int = 0

    def describe(self) -> str:
        return f"kvm_halt_poll_ns vcpu {self.vcpu} {'grow' if self.grow else 'shrink'} {self.old} -> {self.new}"


TraceItem = Union[Wakeup, PollChange]


@dataclass(frozen=True)
class Phase:
    """Halts under one setting: the module's parameters and, once KVM_CAP_HALT_POLL was enabled on
    the VM, its value (which then is the maximum instead of `halt_poll_ns`)."""

    name: str
    params: Params
    vm_max: Optional[int]
    trace: tuple[TraceItem, ...]

    @property
    def max_ns(self) -> int:
        return self.params.halt_poll_ns if self.vm_max is None else self.vm_max

    def max_name(self) -> str:
        return "the VM's KVM_CAP_HALT_POLL" if self.vm_max is not None else "halt_poll_ns"


def grown(old: int, p: Params) -> int:
    """grow_halt_poll_ns: old unchanged with grow 0; else old * grow in 32 bits, at least grow_start."""
    if p.grow == 0:
        return old
    return max((old * p.grow) & U32_MAX, p.grow_start)


def shrunk(old: int, p: Params) -> int:
    """shrink_halt_poll_ns: 0 with shrink 0, else old / shrink; 0 when below grow_start."""
    val = old // p.shrink if p.shrink else 0
    return 0 if val < p.grow_start else val


def decide(window: int, halt_ns: int, valid: bool, max_ns: int) -> str:
    """kvm_vcpu_halt's choice after a halt (polling allowed): "grow", "shrink", "none" or "reset"
    (the window zeroed without a trace, when the maximum is 0).  `window` is the entry window."""
    if not valid:
        return "shrink"
    if max_ns == 0:
        return "reset"
    if halt_ns <= window:
        return "none"
    if window and halt_ns > max_ns:
        return "shrink"
    if window < max_ns and halt_ns < max_ns:
        return "grow"
    return "none"


def bucket(value: int) -> int:
    """kvm_stats_log_hist_update's bucket: fls64(value), at most the last."""
    return min(value.bit_length(), HIST_BUCKETS - 1)


@dataclass
class StatsExpectation:
    """What the vCPU's halt statistics must show, from its creation on."""

    halts: int = 0
    attempted: int = 0
    successful: int = 0
    invalid: int = 0
    waited: int = 0
    waited_ns: int = 0
    success_ns_max: int = 0
    unpolled_wait_buckets: Counter[int] = field(default_factory=Counter)

    def add(self, window: int, w: Wakeup) -> None:
        self.halts += 1
        if window:
            self.attempted += 1
            if not w.waited:
                self.successful += 1
                self.success_ns_max += w.ns
                self.invalid += not w.valid
        if w.waited:
            self.waited += 1
            self.waited_ns += w.ns
            if not window:
                self.unpolled_wait_buckets[bucket(w.ns)] += 1


# Kinds of step the model saw, counted so a scenario can tell what it exercised.
KINDS = ("grow", "grow-unchanged", "grow-past-max", "shrink", "shrink-unchanged", "shrink-to-0", "none", "long-at-0",
         "entry-clamp", "reset", "poll-success", "poll-fail", "unpolled", "over-module-max")


@dataclass
class HaltPollModel:
    """One vCPU of one VM, from its creation.  Feed it phases in order with `run`."""

    vcpu: int = 0
    window: int = 0
    stats: StatsExpectation = field(default_factory=StatsExpectation)
    seen: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    def run(self, phase: Phase) -> list[Finding]:
        """Judge one phase's trace; the findings are also kept in `findings`."""
        before = len(self.findings)
        pending: list[PollChange] = []
        for item in phase.trace:
            if isinstance(item, PollChange):
                pending.append(item)
                continue
            self._halt(phase, pending, item)
            pending = []
        if pending:
            self._find(phase, "hp-order", f"{pending[0].describe()} with no kvm_vcpu_wakeup after it: the trace "
                       f"of a halt ends with its wakeup", pending[0])
            self.window = pending[-1].new
        return self.findings[before:]

    # --- one halt -----------------------------------------------------------

    def _halt(self, phase: Phase, changes: list[PollChange], wakeup: Wakeup) -> None:
        max_ns = phase.max_ns
        entry = min(self.window, max_ns)
        if entry != self.window:
            self.seen["entry-clamp"] += 1
        self.stats.add(entry, wakeup)
        self.seen["unpolled" if not entry else "poll-fail" if wakeup.waited else "poll-success"] += 1
        decision = decide(entry, wakeup.ns, wakeup.valid, max_ns)
        why = self._why(phase, entry, wakeup, decision)
        if len(changes) > 1:
            self._find(phase, "hp-order", f"{len(changes)} kvm_halt_poll_ns before one kvm_vcpu_wakeup "
                       f"({', '.join(c.describe() for c in changes)}): a halt changes the window once at most",
                       changes[1])
            self.window = changes[-1].new
            return
        change = changes[0] if changes else None
        if change is not None and change.vcpu != self.vcpu:
            self._find(phase, "hp-vcpu", f"{change.describe()}: the VM has one vCPU, id {self.vcpu}", change)
        if decision in ("grow", "shrink"):
            self._changed(phase, entry, wakeup, decision, change, why)
        elif change is not None:
            self._find(phase, "hp-decision", f"{change.describe()} after {why}: expected no change", change)
            self.window = change.new
        else:
            self.window = 0 if decision == "reset" else entry
            self.seen["reset" if decision == "reset" else "long-at-0" if not entry and wakeup.ns > max_ns
                      else "none"] += 1

    def _changed(self, phase: Phase, entry: int, wakeup: Wakeup, decision: str, change: Optional[PollChange],
                 why: str) -> None:
        p = phase.params
        want = grown(entry, p) if decision == "grow" else shrunk(entry, p)
        if change is None:
            self._find(phase, "hp-decision", f"no kvm_halt_poll_ns after {why}: expected a {decision} to {want}",
                       wakeup)
            self.window = want
            return
        if change.grow != (decision == "grow"):
            kind = "grow" if change.grow else "shrink"
            self._find(phase, "hp-decision", f"{change.describe()} after {why}: expected a {decision}, not a {kind}",
                       change)
        elif change.old != entry:
            self._find(phase, "hp-old", f"{change.describe()}: KVM polled with window {entry} "
                       f"({self._entry_note(phase, entry)}); the change must start from it", change)
        elif change.new != want:
            rule = "hp-grow" if decision == "grow" else "hp-shrink"
            self._find(phase, rule, f"{change.describe()} after {why}: {self._arithmetic(decision, entry, p)} "
                       f"gives {want} ({p.describe()})", change)
        else:
            self._count_change(phase, decision, entry, want)
        self.window = change.new

    def _count_change(self, phase: Phase, decision: str, entry: int, new: int) -> None:
        if decision == "shrink":
            self.seen["shrink-to-0" if new == 0 else "shrink-unchanged" if new == entry else "shrink"] += 1
        elif new == entry:
            self.seen["grow-unchanged"] += 1
        else:
            self.seen["grow-past-max" if new > phase.max_ns else "grow"] += 1
        if decision == "grow" and phase.vm_max is not None and new > phase.params.halt_poll_ns:
            self.seen["over-module-max"] += 1      # only the VM's own maximum allows it

    # --- words --------------------------------------------------------------

    def _why(self, phase: Phase, entry: int, w: Wakeup, decision: str) -> str:
        max_ns = phase.max_ns
        reasons = {
            "grow": f"is shorter than max {max_ns} and longer than the window {entry}",
            "none": (f"fits the window {entry}" if w.ns <= entry else
                     f"is not shorter than max {max_ns} with the window at {entry}"),
            "reset": f"ended with max {max_ns}",
        }
        if not w.valid:
            text = "was an invalid wakeup"
        elif decision == "shrink":
            text = f"is longer than max {max_ns} with the window at {entry}"
        else:
            text = reasons[decision]
        return f"a halt of {w.ns} ns ({w.describe()}) that {text} ({phase.max_name()} {max_ns})"

    def _entry_note(self, phase: Phase, entry: int) -> str:
        if entry == self.window:
            return "the window the last change left"
        return f"the window {self.window} clamped to {phase.max_name()} {phase.max_ns} as the halt began"

    @staticmethod
    def _arithmetic(decision: str, old: int, p: Params) -> str:
        if decision == "grow":
            if p.grow == 0:
                return f"halt_poll_ns_grow 0 leaves {old} as it is:"
            return (f"{old} × halt_poll_ns_grow {p.grow} (modulo 2^32), at least halt_poll_ns_grow_start "
                    f"{p.grow_start},")
        if p.shrink == 0:
            return f"halt_poll_ns_shrink 0 resets {old} to 0:"
        return (f"{old} / halt_poll_ns_shrink {p.shrink}, 0 if below halt_poll_ns_grow_start {p.grow_start},")

    def _find(self, phase: Phase, rule: str, message: str, at: TraceItem) -> None:
        window = tuple(("> " if item is at else "  ") + f"{item.line}: {item.describe()}"
                       for item in phase.trace if abs(item.line - at.line) <= 3)
        self.findings.append(Finding(rule=rule, message=message, op=f"phase {phase.name!r}", window=window))


# --- the statistics -----------------------------------------------------------

STATS = ("halt_attempted_poll", "halt_successful_poll", "halt_poll_invalid", "halt_wakeup",
         "halt_poll_success_ns", "halt_poll_fail_ns", "halt_wait_ns")
HISTS = ("halt_poll_success_hist", "halt_poll_fail_hist", "halt_wait_hist")


def check_stats(want: StatsExpectation, stats: Mapping[str, int], hists: Mapping[str, Sequence[int]],
                vm: str) -> list[Finding]:
    """The vCPU's halt statistics (KVM_GET_STATS_FD, since its creation) against its trace."""
    out: list[Finding] = []

    def find(message: str) -> None:
        out.append(Finding(rule="hp-stats", message=message, op=vm))

    missing = [name for name in STATS if name not in stats] + [name for name in HISTS if name not in hists]
    if missing:
        find(f"the vCPU's binary stats lack {', '.join(missing)}")
        return out
    exact = (("halt_attempted_poll", want.attempted, "halts that polled (window above 0)"),
             ("halt_successful_poll", want.successful, "polled halts that did not wait"),
             ("halt_poll_invalid", want.invalid, "successful polls ended by an invalid wakeup"))
    for name, count, what in exact:
        if stats[name] != count:
            find(f"{name} is {stats[name]}; the trace has {count} {what}")
    summed = stats["halt_wait_ns"] + stats["halt_poll_fail_ns"]
    if summed != want.waited_ns:
        find(f"halt_wait_ns {stats['halt_wait_ns']} + halt_poll_fail_ns {stats['halt_poll_fail_ns']} = {summed}; "
             f"the {want.waited} waited halts of the trace last {want.waited_ns} ns in all")
    if stats["halt_poll_success_ns"] > want.success_ns_max:
        find(f"halt_poll_success_ns {stats['halt_poll_success_ns']} is more than the {want.success_ns_max} ns "
             f"the {want.successful} successful polls of the trace lasted")
    if stats["halt_wakeup"] < want.waited:
        find(f"halt_wakeup {stats['halt_wakeup']}: fewer wake-ups than the {want.waited} halts that waited")
    for name, count, what in (("halt_poll_success_hist", want.successful, "successful polls"),
                              ("halt_poll_fail_hist", want.attempted - want.successful, "failed polls"),
                              ("halt_wait_hist", want.waited, "waited halts")):
        if len(hists[name]) != HIST_BUCKETS:
            find(f"{name} has {len(hists[name])} buckets, not {HIST_BUCKETS}")
        elif sum(hists[name]) != count:
            find(f"{name} counts {sum(hists[name])}; the trace has {count} {what}")
    wait_hist = hists["halt_wait_hist"]
    if len(wait_hist) == HIST_BUCKETS:
        for b, n in sorted(want.unpolled_wait_buckets.items()):
            if wait_hist[b] < n:
                find(f"halt_wait_hist[{b}] is {wait_hist[b]}; {n} halts that waited without polling lasted "
                     f"[{1 << (b - 1) if b else 0}, {(1 << b) - 1}] ns, all of it waiting")
    return out


def check_l2_hlts(hlts: int, halt_exits: int, vm: str) -> list[Finding]:
    """KVM's halt_exits (x86: HLT intercepts) against the HLTs the L2 executed."""
    if hlts == halt_exits:
        return []
    return [Finding(rule="hp-stats", op=vm,
                    message=f"halt_exits is {halt_exits}; the L2 executed {hlts} HLTs")]
