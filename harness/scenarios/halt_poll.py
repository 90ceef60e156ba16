"""halt-poll: KVM's halt-polling window grows, shrinks and is clamped as docs/halt-poll.md says.

minivmm runs an L2 with the in-kernel irqchip; the L2 arms its local APIC
timer and halts, short (a 200 µs timer: a block well under the maximum window)
and long (20 ms: far over it), so each halt reaches `kvm_vcpu_halt`.  Between
batches of halts the scenario sets the kvm module's halt-polling parameters
(grow 0, shrink 0, grow_start 0 and above the maximum, a grow that wraps 32
bits, the maximum lowered and zeroed under a live vCPU) and the per-VM
`KVM_CAP_HALT_POLL` (above the module's maximum, 0, and values the kernel must
refuse), and restores the parameters afterwards.  KVM's `kvm_halt_poll_ns` and
`kvm_vcpu_wakeup`, recorded in a tracefs instance of our own, are judged by
harness.model.halt_poll step by step, and each VM's halt statistics (its vCPU's
binary stats fd) against its trace; the L2's own account of each halt (timer
interrupts, HLTs) against KVM's `halt_exits`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

from harness.errors import GuestError
from harness.guest import Guest
from harness.guest_data import MAX_ERRNO, U64_MAX, GuestDataError, field, int_field, int_list_field
from harness.guest_data import int_map_field, parse_int
from harness.kvm.halt_trace import HaltTrace, Traced
from harness.kvm.vmm import Vmm
from harness.model.findings import Finding
from harness.model.halt_poll import DEFAULTS, HaltPollModel, Params, Phase, Wakeup, check_l2_hlts, check_stats
from harness.scenarios.base import KVM_NEEDS, TRACE_NEEDS, NeedsKvm, ScenarioContext
from harness.verdict import Verdict

PARAMETERS = "/sys/module/kvm/parameters"
# Params' fields in this order.
PARAM_FILES = ("halt_poll_ns", "halt_poll_ns_grow", "halt_poll_ns_grow_start", "halt_poll_ns_shrink")
FIELDS = dict(zip(PARAM_FILES, ("halt_poll_ns", "grow", "grow_start", "shrink")))
U32_MAX = (1 << 32) - 1

# Under TCG a 200 µs timer blocks the vCPU for 0.2 ms (median) to 0.5 ms (90th percentile), now
# and then for several ms when the host is busy; a 20 ms one for 20 ms and more.
SHORT = 200_000          # ns: the timer of a short halt
LONG = 20_000_000        # ns: a long one, far over every maximum below
MAX = 5_000_000          # the maximum window of most steps: between the two, above most noise
# A step whose halts did not show what it is for (no halt blocked short, noise made a short one
# long) runs its halts again, this many times in all, before that is a finding.
ROUNDS = 3
EINVAL = 22
# KVM_CAP_HALT_POLL values the kernel must refuse: (value, flags).
BAD_CAPS = ((1 << 32, 0), (1000, 1))


def _s(n: int) -> tuple[int, ...]:
    return (SHORT,) * n


def _l(n: int) -> tuple[int, ...]:
    return (LONG,) * n


@dataclass(frozen=True)
class Step:
    """One batch of halts under one setting.  `new_vm`: on a fresh VM (the vCPU's window 0);
    `vm_cap`: KVM_ENABLE_CAP(KVM_CAP_HALT_POLL) with it first; `bad_caps`: first the values the
    kernel must refuse; `expect`: what the model must have seen in it (harness.model.halt_poll.KINDS,
    "a|b" for either), or the step did not test what it is for.  Shrink 1 keeps a window that a
    noisy long halt would otherwise reset, where a step needs it to survive."""

    name: str
    params: Params
    halts: tuple[int, ...]
    new_vm: bool = False
    vm_cap: Optional[int] = None
    bad_caps: bool = False
    expect: tuple[str, ...] = ()


PLAN: tuple[Step, ...] = (
    Step("grow-shrink", Params(MAX, 2, 50_000, 2), _s(12) + _l(4) + _s(4), new_vm=True,
         expect=("grow", "shrink|shrink-to-0")),
    Step("shrink-0", Params(MAX, 2, 50_000, 0), _s(6) + _l(2), new_vm=True,
         expect=("grow", "shrink-to-0", "long-at-0")),
    Step("grow-0", Params(MAX, 0, 50_000, 2), _s(4) + _l(1), new_vm=True, expect=("grow-unchanged", "long-at-0")),
    Step("grow_start-0", Params(MAX, 2, 0, 2), _s(4) + _l(1), new_vm=True, expect=("grow-unchanged",)),
    Step("grow_start-above-max", Params(2_000_000, 2, 6_000_000, 2), _s(6) + _l(1), new_vm=True,
         expect=("grow-past-max", "entry-clamp", "shrink-to-0")),
    # 50000 × 100000 wraps to 705032704: past the maximum, clamped at the next (long) halt.
    Step("grow-wraps", Params(MAX, 100_000, 50_000, 1), _s(6) + _l(1), new_vm=True,
         expect=("grow-past-max", "entry-clamp")),
    # The VM's maximum above the module's: windows the module's 10 µs would not allow.
    Step("vm-cap", Params(10_000, 2, 50_000, 2), _s(8) + _l(1), new_vm=True, vm_cap=MAX,
         expect=("over-module-max",)),
    Step("vm-cap-0", Params(10_000, 2, 50_000, 2), _s(3), vm_cap=0, bad_caps=True, expect=("reset",)),
    # The module's maximum lowered, zeroed and restored under a live vCPU.
    Step("max-lowered", Params(MAX, 4, 50_000, 1), _s(6), new_vm=True, expect=("grow",)),
    Step("max-lowered-20us", Params(20_000, 4, 50_000, 1), _s(2) + _l(1), expect=("entry-clamp",)),
    Step("max-0", Params(0, 4, 50_000, 1), _s(2), expect=("reset",)),
    Step("max-restored", Params(MAX, 4, 50_000, 1), _s(3), expect=("grow",)),
)


@dataclass(frozen=True)
class L2Halt:
    """What the L2 saw of one halt."""

    ns: int          # the timer it armed
    tsc: int         # its TSC cycles from arming to waking
    l2_ns: int       # the same in ns
    irqs: int        # timer interrupts taken
    hlts: int        # HLTs tried


@dataclass(frozen=True)
class L2Answer:
    halts: tuple[L2Halt, ...]
    other_irqs: int
    skipped: int     # HLTs the handlers stepped over (an interrupt taken just before them)

    @property
    def hlts_executed(self) -> int:
        return sum(h.hlts for h in self.halts) - self.skipped


def parse_halt_answer(answer: dict[str, Any], asked: Sequence[int]) -> L2Answer:
    """minivmm's answer to "halt": one entry per duration asked, in order."""
    source = "minivmm halt"
    items = field(answer, "halts", list, source)
    if len(items) != len(asked):
        raise GuestDataError(source, f"{len(items)} halts answered for {len(asked)} asked")
    where = f"{source} 'halts'"
    halts = []
    for item, ns in zip(items, asked):
        halt = L2Halt(ns=int_field(item, "ns", where, lo=0, hi=U32_MAX), tsc=int_field(item, "tsc", where, lo=0,
                                                                                    hi=U64_MAX),
                      l2_ns=int_field(item, "l2_ns", where, lo=0, hi=U64_MAX),
                      irqs=int_field(item, "irqs", where, lo=0, hi=U32_MAX),
                      hlts=int_field(item, "hlts", where, lo=0, hi=U32_MAX))
        if halt.ns != ns:
            raise GuestDataError(where, f"a halt of {halt.ns} ns answered where {ns} was asked", item)
        halts.append(halt)
    answered = L2Answer(tuple(halts), other_irqs=int_field(answer, "other_irqs", source, lo=0, hi=U32_MAX),
                        skipped=int_field(answer, "skipped", source, lo=0, hi=U32_MAX))
    if answered.hlts_executed < 0:
        raise GuestDataError(source, f"{answered.skipped} HLTs skipped of {answered.hlts_executed + answered.skipped}"
                             f" tried", answer)
    return answered


def parse_vcpu_stats(answer: dict[str, Any]) -> tuple[dict[str, int], dict[str, list[int]]]:
    """minivmm's answer to {"op": "stats", "vcpu": 1}: the u64 stats and the histograms."""
    source = "minivmm stats"
    stats = int_map_field(answer, "stats", source)
    raw = field(answer, "hists", dict, source)
    hists = {name: int_list_field(raw, name, f"{source} 'hists'", lo=0, hi=U64_MAX) for name in raw}
    for name, buckets in hists.items():
        if len(buckets) > 64:
            raise GuestDataError(f"{source} 'hists'", f"{name} has {len(buckets)} buckets")
    return stats, hists


def _ret_errno(answer: dict[str, Any], op: str) -> tuple[int, int]:
    return (int_field(answer, "ret", f"minivmm {op}"),
            int_field(answer, "errno", f"minivmm {op}", lo=0, hi=MAX_ERRNO))


# --- the kvm module's parameters ---------------------------------------------------

def read_params(guest: Guest) -> Params:
    """The four parameters, one integer per line in PARAM_FILES order."""
    out = guest.check(["sh", "-c", f"cd {PARAMETERS} && cat {' '.join(PARAM_FILES)}"])
    return _params(out, f"{PARAMETERS}/halt_poll_ns*")


def _params(out: str, source: str) -> Params:
    lines = out.split()
    if len(lines) != len(PARAM_FILES):
        raise GuestDataError(source, f"expected {len(PARAM_FILES)} integers", out)
    return Params(*(parse_int(v, source, lo=0, hi=U32_MAX) for v in lines))


def write_params(guest: Guest, p: Params) -> Params:
    """Write the four parameters and read them back: what the kernel took."""
    values = (p.halt_poll_ns, p.grow, p.grow_start, p.shrink)
    writes = " && ".join(f"echo {v} > {name}" for name, v in zip(PARAM_FILES, values))
    out = guest.check(["sh", "-c", f"cd {PARAMETERS} && {writes} && cat {' '.join(PARAM_FILES)}"])
    took = _params(out, f"{PARAMETERS}/halt_poll_ns*")
    if took != p:
        raise GuestError(f"the kvm module took {took.describe()} when given {p.describe()}")
    return took


def defaults_problem(version: tuple[int, int], found: Params, cmdline: str) -> Optional[str]:
    """The module's parameters before the scenario touched them against the version's defaults;
    None when they match, are unknown for the version, or were set on the kernel command line."""
    want = DEFAULTS.get(version)
    if want is None or "kvm.halt_poll" in cmdline or Params(*want) == found:
        return None
    return (f"[hp-defaults] the kvm module's halt-polling parameters are {found.describe()}; "
            f"{version[0]}.{version[1]}'s defaults are {Params(*want).describe()}")


# --- the run ---------------------------------------------------------------------

@dataclass
class Run:
    """What one scenario run gathered, for the verdict and the artifacts."""

    findings: list[str]
    notes: list[str]
    phases: list[dict[str, Any]]
    trace_lines: list[str]


class Driver:
    """Drives the plan: parameters, VMs, halts, trace collections; the model judges as it goes."""

    def __init__(self, guest: Guest, vmm: Vmm, trace: HaltTrace, misreport: Optional[tuple[str, int, int]]):
        self.guest, self.vmm, self.trace, self.misreport = guest, vmm, trace, misreport
        self.run = Run([], [], [], [])
        self.model: Optional[HaltPollModel] = None
        self.vm_name = ""
        self.vm_cap: Optional[int] = None
        self.hlts = 0
        self.params: Optional[Params] = None

    def told(self, p: Params) -> Params:
        """The parameters as the model hears them: the self-test changes one (parameter, real, told)."""
        if self.misreport is None:
            return p
        name, real, told = self.misreport
        return replace(p, **{FIELDS[name]: told}) if getattr(p, FIELDS[name]) == real else p

    def step(self, s: Step) -> None:
        if s.params != self.params:
            self.params = write_params(self.guest, s.params)
        if s.new_vm:
            self.end_vm()
            self.vmm.call("create", pages=0, irqchip=1)
            self.model, self.vm_name, self.vm_cap, self.hlts = HaltPollModel(), f"VM of phase {s.name!r}", None, 0
        assert self.model is not None
        if s.bad_caps:
            self.refused_caps(s)
        if s.vm_cap is not None:
            ret, errno = _ret_errno(self.vmm.call("cap", cap="halt-poll", value=s.vm_cap), "cap")
            if ret < 0:
                raise GuestError(f"KVM_ENABLE_CAP(KVM_CAP_HALT_POLL, {s.vm_cap}) failed with errno {errno}")
            self.vm_cap = s.vm_cap
        seen: Counter[str] = Counter()
        for attempt in range(1, ROUNDS + 1):
            l2 = parse_halt_answer(self.vmm.call("halt", ns=list(s.halts)), s.halts)
            self.hlts += l2.hlts_executed
            seen += self.judge(s, attempt, l2, self.trace.collect())
            missing = [kinds for kinds in s.expect if not any(seen.get(k) for k in kinds.split("|"))]
            if not missing:
                break
        for kinds in missing:
            self.run.findings.append(
                f"[hp-exercise] phase {s.name!r} never saw {kinds!r} in {ROUNDS} rounds (it saw "
                f"{dict(sorted(seen.items()))}): the scenario did not exercise what it tests")

    def refused_caps(self, s: Step) -> None:
        """KVM_CAP_HALT_POLL with a value past u32 or with flags: EINVAL, and the VM's maximum kept."""
        for value, flags in BAD_CAPS:
            ret, errno = _ret_errno(self.vmm.call("cap", cap="halt-poll", value=value, flags=flags), "cap")
            if ret >= 0 or errno != EINVAL:
                self.run.findings.append(
                    f"[hp-cap] in phase {s.name!r}: KVM_ENABLE_CAP(KVM_CAP_HALT_POLL, {value}, flags {flags}) "
                    f"returned {ret} errno {errno}; kvm_vm_ioctl_enable_cap_generic refuses a value past 32 bits "
                    f"and any flags with EINVAL")

    def judge(self, s: Step, attempt: int, l2: L2Answer, events: list[Traced]) -> Counter[str]:
        """One round of a step's halts: the model on its trace, the L2's answer; what the model saw."""
        assert self.model is not None
        others = sorted({e.pid for e in events if e.pid != self.vmm.pid})
        if others:
            raise GuestError(f"halt-polling events from tasks {others} besides minivmm ({self.vmm.pid}): "
                             f"another VM halted during the scenario")
        phase = Phase(s.name, self.told(self.params or s.params), self.vm_cap, tuple(e.item for e in events))
        seen_before = self.model.seen.copy()
        found = self.model.run(phase)
        self.run.findings += [f.line() + "".join(f"\n    {w}" for w in f.window) for f in found]
        seen = self.model.seen - seen_before
        for i, h in enumerate(l2.halts):
            if h.irqs != 1:
                self.run.findings.append(f"[hp-l2] phase {s.name!r}, halt {i}: the L2 took {h.irqs} timer "
                                         f"interrupts for one one-shot arming of {h.ns} ns")
        label = s.name + (f" (round {attempt})" if attempt > 1 else "")
        self.run.trace_lines += [f"# phase {label}: {phase.params.describe()}"
                                 + (f", VM cap {self.vm_cap}" if self.vm_cap is not None else "")]
        self.run.trace_lines += [f"{e.item.line}: {e.item.describe()}" for e in events]
        waits = [h.l2_ns for h in l2.halts]
        self.run.phases.append({
            "phase": s.name, "round": attempt, "params": phase.params.describe(), "vm_cap": self.vm_cap,
            "timers_ns": list(s.halts), "l2": [vars(h) for h in l2.halts], "other_irqs": l2.other_irqs,
            "skipped": l2.skipped, "events": len(events), "seen": dict(sorted(seen.items()))})
        blocked = sum(1 for e in events if isinstance(e.item, Wakeup))
        self.run.notes.append(
            f"{label}: {len(s.halts)} halts, {blocked} blocked in KVM, the L2 saw "
            f"{min(waits) // 1000}-{max(waits) // 1000} µs; " + ", ".join(f"{k} {n}" for k, n in sorted(seen.items())))
        return seen

    def end_vm(self) -> None:
        """The finished VM's vCPU statistics against everything its trace said, then the VM goes."""
        if self.model is None:
            return
        stats, hists = parse_vcpu_stats(self.vmm.call("stats", vcpu=1))
        found: list[Finding] = check_stats(self.model.stats, stats, hists, self.vm_name)
        if "halt_exits" in stats:
            found += check_l2_hlts(self.hlts, stats["halt_exits"], self.vm_name)
        self.run.findings += [f.line() for f in found]
        want = self.model.stats
        self.run.notes.append(
            f"{self.vm_name}: {want.halts} halts in KVM, {want.attempted} polled ({want.successful} successful), "
            f"{want.waited} waited; halt_exits {stats.get('halt_exits')} for {self.hlts} L2 HLTs, "
            f"halt_wakeup {stats.get('halt_wakeup')}")
        self.vmm.call("destroy")
        self.model = None


class HaltPoll(NeedsKvm):
    name = "halt-poll"
    description = ("KVM's halt-polling window (grow, shrink, grow_start, clamps, KVM_CAP_HALT_POLL) step by step "
                   "against the model, and the vCPU's halt statistics against KVM's trace")
    knobs: frozenset[str] = frozenset()
    needs: tuple[str, ...] = (*KVM_NEEDS, *TRACE_NEEDS)
    # The oracle's self-test: (a PARAM_FILES name, the kernel's value, what the model is told).
    misreport: Optional[tuple[str, int, int]] = None

    def run_with_kvm(self, ctx: ScenarioContext) -> Verdict:
        guest = ctx.guest
        original = read_params(guest)
        findings: list[str] = []
        problem = defaults_problem(ctx.features.version, original, guest.read_text("/proc/cmdline"))
        if problem:
            findings.append(problem)
        trace = HaltTrace(guest)
        try:
            trace.start()
            with open(ctx.out_dir / "requests.log", "w") as log, Vmm(guest, transcript=log) as vmm:
                driver = Driver(guest, vmm, trace, self.misreport)
                for step in PLAN:
                    driver.step(step)
                driver.end_vm()
        finally:
            try:
                write_params(guest, original)     # first: the next scenarios' KVM must not poll by our rules
            finally:
                trace.stop()
        run = driver.run
        (ctx.out_dir / "halt-trace.txt").write_text("\n".join(run.trace_lines) + "\n")
        (ctx.out_dir / "phases.json").write_text(json.dumps(run.phases, indent=1) + "\n")
        notes = [f"kvm module parameters before (restored after): {original.describe()}"] + run.notes
        if self.misreport:
            name, real, told = self.misreport
            notes.insert(0, f"self-test: the model is told {name} {told} where the kernel has {real}")
        return Verdict.from_findings(findings + run.findings, notes)


class HaltPollMisreport(HaltPoll):
    """The oracle's self-test: the model hears halt_poll_ns_grow 3 where the kernel has 2."""

    name = "halt-poll-misreport"
    description = ("(oracle self-test, not in the default configs) halt-poll with halt_poll_ns_grow misreported "
                   "to the model (3 for 2): must fail naming it")
    misreport = ("halt_poll_ns_grow", 2, 3)


__all__ = ["HaltPoll", "HaltPollMisreport", "PLAN", "Step", "parse_halt_answer", "parse_vcpu_stats"]
