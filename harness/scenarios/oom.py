"""memcg OOM with the probe holding the victim's mm, so the OOM reaper's
non-blockable path runs and is observed (kernel-semantics.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import GuestError
from harness.events import Callback
from harness.model.reaper import judge_reaper, judge_reaper_log
from harness.scenarios.base import PROBE_NEEDS, ScenarioContext
from harness.scenarios.memcg import Memcg
from harness.scenarios.probe import format_finding, judge_run, load_probe, run_mmops
from harness.verdict import Verdict

# mmops's REGION_BASE: its first mapping, and so the oom operation's allocation, lies here.  The
# interval notifier must be given before the workload starts; the run checks the address after.
REGION_BASE = 0x7E0000000000


@dataclass(frozen=True)
class Variant:
    name: str
    mode: str                    # judge_reaper's mode
    flags: tuple[str, ...] = ()  # nhctl attach options beyond --hold
    interval: bool = False       # a (failing) interval notifier over the allocation


class MemcgOomScenario:
    name = ""
    description = ""
    knobs = frozenset({"probe_corrupt", "memcg_max", "alloc", "reaper_wait"})
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_MEMCG")
    variants: tuple[Variant, ...] = ()

    def run(self, ctx: ScenarioContext) -> Verdict:
        guest, cfg = ctx.guest, ctx.config
        load_probe(guest, cfg.probe_corrupt)
        features = ctx.features
        findings: list[str] = []
        notes: list[str] = []
        for v in self.variants:
            alloc = cfg.alloc_mib << 20
            interval = (REGION_BASE, REGION_BASE + alloc) if v.interval else None
            attach = ["--hold", "--linger-ms", str(int(cfg.reaper_wait_s * 1000)), *v.flags]
            if interval:
                attach += ["--interval", hex(interval[0]), hex(interval[1])]
            marker = f"notifier-harness: {self.name}/{v.name} start"
            guest.kmsg(marker)
            with Memcg(guest, f"nh-{v.name}", cfg.memcg_max_mib) as memcg:
                attach += ["--cgroup", memcg.path]
                run = run_mmops(guest, v.name, [f"oom:{cfg.alloc_mib}M"], attach, killed_by=9,
                                timeout=cfg.reaper_wait_s + 60)
                events, current, procs = memcg.events(), memcg.current(), memcg.procs()
            log = guest.dmesg().split(marker, 1)[-1]
            (ctx.out_dir / f"{v.name}.dmesg.log").write_text(log)
            oom_op = run.only_op("oom")
            reaper = oom_op.reaper_pid
            if not reaper:
                raise GuestError(f"{v.name}: the guest has no oom_reaper kernel thread")
            if interval and (oom_op.start, oom_op.end) != interval:
                raise GuestError(f"{v.name}: the allocation is [{oom_op.start:#x}, {oom_op.end:#x}), not the "
                                 f"interval [{interval[0]:#x}, {interval[1]:#x}) the probe watched")
            run_findings, judgement = judge_run(run, features, ctx.out_dir, nonblocking_pids=frozenset({reaper}),
                                                failing="--fail-nonblock" in v.flags)
            findings += run_findings
            reaped = judge_reaper(run.records, oom_op.vmas, reaper, v.mode, interval)
            findings += [format_finding(v.name, f) for f in reaped.findings]
            findings += [format_finding(v.name, f) for f in judge_reaper_log(log, run.pid, v.mode)]
            releases = [r for r in run.records if r.callback == Callback.RELEASE]
            last_reap = max((r.seq for r in run.records if r.pid == reaper), default=0)
            if releases and releases[0].seq < last_reap:
                findings.append(f"{v.name}: release #{releases[0].seq} came before the reaper finished "
                                f"(#{last_reap}); the hold should keep the mm until then")
            if events.get("oom", 0) < 1 or events.get("oom_kill", 0) != 1:
                findings.append(f"{v.name}: memory.events says oom {events.get('oom')} and oom_kill "
                                f"{events.get('oom_kill')}; expected oom >= 1 and oom_kill == 1")
            if memcg.max_bytes is not None and current >= memcg.max_bytes:
                findings.append(f"{v.name}: the memcg still charges {current} bytes after the mm was released "
                                f"(memory.max {memcg.max_bytes})")
            if procs:
                findings.append(f"{v.name}: tasks {procs} are still in the memcg")
            notes.append(f"{v.name}: memory.events {events}, memory.current after release {current}; "
                         f"{reaped.attempts} reaping attempt(s) over {reaped.reapable} reapable VMAs; "
                         f"{len(run.records)} records")
        return Verdict.from_findings(findings, notes)


class MemcgOom(MemcgOomScenario):
    name = "memcg-oom"
    description = "memcg OOM kill; the OOM reaper's non-blockable UNMAP per reapable VMA; release after the hold"
    variants = (Variant("reap", "normal"),)


class MemcgOomNonblockFail(MemcgOomScenario):
    name = "memcg-oom-nonblock-fail"
    description = ("the probe fails non-blockable starts with -EAGAIN: every notifier still called, the unwind "
                   "ends, 10 retries, 'unable to reap'; and a failing interval notifier hides the range")
    variants = (Variant("fail", "fail", ("--fail-nonblock",)),
                Variant("interval-fail", "interval-fail", ("--interval-fail",), interval=True))
