"""kvm-thp-split, kvm-ksm, kvm-oom: KVM's notifier under the mm changes that reach a running VM.

Each scenario runs a VM in minivmm, starts KVM's tracepoints, attaches the
probe to the VMM's mm, changes the mm under the VM, and then asks three things:
do the probe and KVM agree on every callback (harness.model.kvm_notifier),
did KVM's own state follow (binary stats, teardown), and does the L2 still
read exactly what it should.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from harness.artifacts.guest_build import MMOPS, NHCTL
from harness.errors import GuestError
from harness.events import Callback, Record, TraceEvent
from harness.guest import Guest
from harness.guest_data import MAX_ERRNO, int_field, int_list_field, int_map_field, parse_json_lines
from harness.kvm.ftrace import KPROBES, KvmTrace
from harness.kvm.vmm import Vmm
from harness.model.dirty_log import expected_values_problem
from harness.model.kvm_notifier import cross_check
from harness.model.ops import USER_ADDR_LIMIT, Op
from harness.scenarios.base import KVM_NEEDS, PROBE_NEEDS, TRACE_NEEDS, NeedsKvm, ScenarioContext
from harness.scenarios.memcg import Memcg
from harness.scenarios.probe import ProbeStats, detach_and_drain, load_probe, parse_mmops_ops, stream_problems
from harness.verdict import Verdict

PAGE = 4096
HUGE_PAGES = 512


@dataclass
class Observation:
    records: list[Record]
    events: list[TraceEvent]
    probe_stats: ProbeStats
    overruns: int
    kprobes: tuple[str, ...]


def observe(guest: Guest, pid: int, action: Callable[[], None], until: Optional[str] = None) -> Observation:
    """KVM's tracepoints on, the probe on `pid`'s mm, `action` (then, with `until`, up to 10 s for
    that trace event), the probe off, the tracepoints off.  Tracing brackets the probe's
    attachment, so KVM may have seen more at the ends, never less."""
    trace = KvmTrace(guest)
    trace.start()
    try:
        guest.check([NHCTL, "attach", str(pid)])
        try:
            action()
            if until:
                trace.wait_for(until, timeout=10)
        finally:
            stats, records = detach_and_drain(guest)
    finally:
        events = trace.stop()
    return Observation(records, events, stats, trace.overruns, trace.kprobes)


def mmops_on_vmm(guest: Guest, step: str, timeout: float, what: str) -> Op:
    """One mmops step that acts on the VMM from outside (`step` is KIND:PID:...), without the probe on
    mmops itself: the step's op, or GuestError naming `what` failed."""
    result = guest.run([MMOPS, "--no-probe", step], timeout=timeout)
    said = (result.stderr or result.stdout).strip()[-300:]
    kind = step.partition(":")[0]
    source = f"mmops {kind}"
    lines = parse_json_lines(result.stdout, source)
    # mmops's own error line raises here
    ops = parse_mmops_ops(guest, lines, source)[1] if lines else []
    if not result.ok or not ops or ops[0].kind != kind:
        raise GuestError(f"{what} failed: {said}")
    return ops[0]


def judge_observation(ctx: ScenarioContext, obs: Observation, slot: tuple[int, int],
                      need: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Cross-check the two observers; `need`: call kinds that must have hit the slot."""
    findings: list[str] = []
    (ctx.out_dir / "probe-events.txt").write_text("".join(r.describe() + f" pid {r.pid}\n" for r in obs.records))
    (ctx.out_dir / "kvm-trace.txt").write_text("".join(e.describe() + "\n" for e in obs.events))
    findings += stream_problems("probe", obs.probe_stats, obs.records)
    if obs.overruns:
        raise GuestError(f"ftrace lost {obs.overruns} events to a full buffer; the cross-check would compare "
                         f"an incomplete trace")
    check = cross_check(obs.records, obs.events, ctx.features, slot)
    findings += list(check.findings)
    for kind in need:
        if not check.in_slot.get(kind):
            findings.append(f"no {kind} call reached the slot [{slot[0]:#x}, {slot[1]:#x}) in either observer; "
                            f"the scenario did not exercise what it tests")
    notes = [f"probe and KVM agree on {sum(check.matched.values())} calls {dict(sorted(check.matched.items()))}, "
             f"{dict(sorted(check.in_slot.items()))} on the slot; {check.edge_only} KVM-only at the edges "
             f"of the probe's attachment; {len(obs.records)} probe records, {len(obs.events)} trace events"]
    return findings, notes


def read_check(vmm: Vmm, pages: list[int], expected: list[int], when: str) -> list[str]:
    got = int_list_field(vmm.call("read", pages=pages), "values", "minivmm read", lo=0, hi=0xFFFFFFFF)
    problem = expected_values_problem(pages, expected, got)
    return [f"{when}: {problem}"] if problem else []


def _stats(vmm: Vmm) -> dict[str, int]:
    return int_map_field(vmm.call("stats"), "stats", "minivmm stats")


def slot_of(created: dict[str, Any]) -> tuple[int, int]:
    """The test slot's host range, from minivmm's answer to create."""
    hva = int_field(created, "hva", "minivmm create", lo=0, hi=USER_ADDR_LIMIT)
    pages = int_field(created, "pages", "minivmm create", lo=1, hi=(USER_ADDR_LIMIT - hva) // PAGE)
    return hva, hva + pages * PAGE


def _failed(answer: dict[str, Any]) -> Optional[str]:
    """What went wrong with a request, by its answer's ret and errno; None if it worked."""
    op = answer["op"]     # the Vmm checked it is the request's
    ret = int_field(answer, "ret", f"minivmm {op}")
    errno = int_field(answer, "errno", f"minivmm {op}", lo=0, hi=MAX_ERRNO)
    return f"{op} failed with errno {errno}" if ret < 0 else None


class KvmThpSplit(NeedsKvm):
    name = "kvm-thp-split"
    description = ("a 4 KiB MADV_DONTNEED and a 4 KiB mprotect split THPs under 2M SPTEs: probe and KVM agree, "
                   "pages_2m falls, the L2 reads zero for the dropped page and its pattern elsewhere")
    needs: tuple[str, ...] = (*KVM_NEEDS, *PROBE_NEEDS, *TRACE_NEEDS, "CONFIG_TRANSPARENT_HUGEPAGE")

    def run_with_kvm(self, ctx: ScenarioContext) -> Verdict:
        load_probe(ctx.guest, ctx.config.probe_corrupt)
        npages, base, dropped, protected = 2 * HUGE_PAGES, 0x10000, 5, HUGE_PAGES + 7
        pages = list(range(npages))
        findings: list[str] = []
        with Vmm(ctx.guest) as vmm:
            created = vmm.call("create", pages=npages, flags=0, thp="huge")
            vmm.call("write", pages=pages, value=base, index=1)
            before = _stats(vmm)
            if before.get("pages_2m", 0) < 2:
                raise GuestError(f"KVM maps the slot with {before.get('pages_2m', 0)} 2M SPTEs (pages_4k "
                                 f"{before.get('pages_4k')}); the host gave no THPs to split")
            after: dict[str, int] = {}

            def split() -> None:
                answers = [vmm.call("madvise", offset=dropped * PAGE, length=PAGE, advice="dontneed"),
                           vmm.call("mprotect", offset=protected * PAGE, length=PAGE, prot="r"),
                           vmm.call("mprotect", offset=protected * PAGE, length=PAGE, prot="rw")]
                findings.extend(problem for problem in map(_failed, answers) if problem)
                after.update(_stats(vmm))

            obs = observe(ctx.guest, vmm.pid, split)
            expected = [0 if p == dropped else base + p for p in pages]
            findings += read_check(vmm, pages, expected, "after the split")
        if after.get("pages_2m", 0) >= before["pages_2m"]:
            findings.append(f"pages_2m did not fall: {before['pages_2m']} before the split, "
                            f"{after.get('pages_2m')} after")
        cross, notes = judge_observation(ctx, obs, slot_of(created), need=("unmap",))
        notes.insert(0, f"KVM stats before: pages_2m {before['pages_2m']}, pages_4k {before.get('pages_4k')}; "
                        f"after the split: pages_2m {after.get('pages_2m')}, pages_4k {after.get('pages_4k')}")
        return Verdict.from_findings(findings + cross, notes)


class KvmKsm(NeedsKvm):
    name = "kvm-ksm"
    description = ("ksmd merges the L2's identical pages under KVM (unmap per page, set_spte on 6.1); the L2 "
                   "reads them intact, writes one, and every other page still reads right")
    knobs = frozenset({"probe_corrupt", "ksm_pages", "ksm_timeout"})
    needs: tuple[str, ...] = (*KVM_NEEDS, *PROBE_NEEDS, *TRACE_NEEDS, "CONFIG_KSM")

    def run_with_kvm(self, ctx: ScenarioContext) -> Verdict:
        cfg = ctx.config
        load_probe(ctx.guest, cfg.probe_corrupt)
        npages, value, written, new = cfg.ksm_pages, 0x5A5A5A5A, 3, 0x77
        pages = list(range(npages))
        findings: list[str] = []
        merged: list[Op] = []
        with Vmm(ctx.guest) as vmm:
            created = vmm.call("create", pages=npages, flags=0, thp="never", mergeable=1)
            vmm.call("write", pages=pages, value=value)

            def merge_and_write() -> None:
                merged.append(self._merge(ctx.guest, vmm.pid, cfg.ksm_timeout_s))
                findings.extend(read_check(vmm, pages, [value] * npages, "after ksmd merged the pages"))
                vmm.call("write", pages=[written], value=new)
                findings.extend(read_check(vmm, pages, [new if p == written else value for p in pages],
                                            f"after the L2 wrote page {written}"))

            obs = observe(ctx.guest, vmm.pid, merge_and_write)
        ksmd = merged[0]
        if ksmd.merging_pages < 1:
            findings.append(f"ksmd merged none of the {npages} identical pages in {cfg.ksm_timeout_s:.0f} s "
                            f"(full_scans {ksmd.full_scans_before} -> {ksmd.full_scans})")
        need = ("unmap", "set_spte") if ctx.features.kvm_set_spte_hva else ("unmap",)
        cross, notes = judge_observation(ctx, obs, slot_of(created), need=need)
        notes.insert(0, f"ksm_merging_pages {ksmd.merging_pages} of {npages}, full_scans "
                        f"{ksmd.full_scans_before} -> {ksmd.full_scans}")
        return Verdict.from_findings(findings + cross, notes)

    @staticmethod
    def _merge(guest: Guest, pid: int, timeout: float) -> Op:
        """mmops's ksmd run (ksmd fast until two full scans have passed, then stopped) for the VMM."""
        return mmops_on_vmm(guest, f"ksmd:{pid}:{int(timeout)}", timeout + 30, "running ksmd for the VMM")


class KvmOom(NeedsKvm):
    name = "kvm-oom"
    description = ("the VMM, in a small memcg, is OOM-killed while its L2 writes: KVM's release is called, the "
                   "VM is destroyed, probe and KVM agree, the memcg empties")
    knobs = frozenset({"probe_corrupt", "memcg_max", "alloc", "reaper_wait"})
    needs: tuple[str, ...] = (*KVM_NEEDS, *PROBE_NEEDS, *TRACE_NEEDS, "CONFIG_MEMCG")

    def run_with_kvm(self, ctx: ScenarioContext) -> Verdict:
        cfg, guest = ctx.config, ctx.guest
        load_probe(guest, cfg.probe_corrupt)
        npages = cfg.alloc_mib * 256
        findings: list[str] = []
        with Memcg(guest, "nh-kvm-oom", cfg.memcg_max_mib) as memcg:
            with Vmm(guest, cgroup=memcg.path) as vmm:
                created = vmm.call("create", pages=npages, flags=0, thp="never")

                def fill_until_killed() -> None:
                    vmm.send("write", pages=list(range(npages)), value=1)
                    vmm.wait_killed(timeout=cfg.reaper_wait_s + 60)

                # KVM destroys the VM when the dead VMM's files close, a moment after its mm went.
                obs = observe(guest, vmm.pid, fill_until_killed, until="kvm_destroy")
            events, current, procs = memcg.events(), memcg.current(), memcg.procs()
        if events.get("oom_kill", 0) < 1:
            findings.append(f"the VMM died, but not by the OOM killer: memory.events {events}")
        if procs:
            findings.append(f"tasks {procs} are still in the memcg after the VMM died")
        if memcg.max_bytes is not None and current >= memcg.max_bytes:
            findings.append(f"the memcg still charges {current} bytes after the VMM died")
        releases = [r for r in obs.records if r.callback == Callback.RELEASE]
        # The VMM's VM is the only one in the guest, so every release and destroy seen here is its.
        # Not filtered by pid: the task that drops the mm last runs them, and on 6.12 that can be
        # the VM's kvm-nx-lpage-recovery worker rather than the VMM's main thread.
        kvm_release = [e for e in obs.events if e.name == "kvm_release"]
        destroyed = [e for e in obs.events if e.name == "kvm_destroy"]
        if not releases:
            findings.append("the probe saw no release of the VMM's mm")
        for name, seen in (("kvm_release", kvm_release), ("kvm_destroy", destroyed)):
            if name not in obs.kprobes:
                findings.append(f"the kprobe {name} could not be placed; KVM's teardown was not observed")
            elif len(seen) != 1:
                findings.append(f"{name} (kprobe on {KPROBES[name]}) hit {len(seen)} times; expected once "
                                f"for the VMM's one VM")
        cross, notes = judge_observation(ctx, obs, slot_of(created), need=())
        notes.insert(0, f"memory.events {events}, memory.current after {current}; VMM exit status {vmm.exit_status}; "
                        f"KVM release by {kvm_release[0].comm + '-' + str(kvm_release[0].pid) if kvm_release else '-'}, "
                        f"VM destroyed by {destroyed[0].comm + '-' + str(destroyed[0].pid) if destroyed else '-'}")
        return Verdict.from_findings(findings + cross, notes)
