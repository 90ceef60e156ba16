"""get-put: mmu_notifier_get/put on a workload's mm (docs/get-put.md), judged by
harness/model/get_put.py.

Each plan is one `nhctl getput` command in the guest: mmops starts and waits,
the probe attaches its reference notifier (mmu_notifier_register) to it, the
plan's steps take and drop references around the workload's run, then the
probe detaches and its ring is drained.  The reference notifier's records are
judged against the workload's operations by the usual model (judge_run); the
get/put calls and the subscription's callbacks by the get/put model.  Each
plan's evidence is in the scenario's directory: NAME.ops.json, NAME.events.txt,
NAME.findings.json (the usual model), NAME.steps.json (what nhctl did) and
NAME.getput.json (the get/put model's findings and subscriptions).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.artifacts.guest_build import MMOPS, NHCTL
from harness.errors import GuestError
from harness.events import Callback, Record, parse_records
from harness.guest import Guest
from harness.guest_data import MAX_ERRNO, GuestDataError, field, int_field, parse_json_lines
from harness.model.get_put import GetPutJudgement, judge_get_put
from harness.model.versions import Features
from harness.scenarios.base import PROBE_NEEDS, ScenarioContext
from harness.scenarios.probe import (ProbeStats, WorkloadRun, format_finding, judge_run, load_probe, mmops_source,
                                     note_late_exec, parse_mmops_ops)
from harness.verdict import Verdict

EVENTS_FILE = "/tmp/nh-getput.bin"
U32_MAX = (1 << 32) - 1
MAX_COUNT = 64      # NH_GP_MAX_COUNT: references per get or put step
STEPS = ("get", "put", "sync", "run", "unhold", "overput")
COUNTED = ("get", "put")
# What the workload does while the references are held: each operation a window the reference
# notifier and the subscription must both see, once.
WORKLOAD = ("map:A:1M:nothp", "dontneed:A:0:64K", "mprotect:A:256K:64K:r", "munmap:A:512K:64K")
COMMAND_TIMEOUT = 60.0


@dataclass(frozen=True)
class Plan:
    name: str                  # names the plan's files and findings
    steps: tuple[str, ...]     # nhctl getput's steps
    hold: bool                 # the probe pins the mm until `unhold`: the workload's exit leaves it alive
    what: str                  # for the notes

    def calls(self) -> Counter[str]:
        """How many gets, puts and synchronizes the plan asks the probe for (a refused get is one)."""
        out: Counter[str] = Counter()
        for step in self.steps:
            kind, _, count = step.partition(":")
            out[kind] += int(count) if count else 1
        return out


PLANS = (
    Plan("refs", ("get:3", "run", "put:1", "put:2", "get:2", "put:2", "sync", "unhold", "get:1"), hold=True,
         what="3 references over the workload's operations, then put; a get right after the last put takes a "
              "new subscription; the exit with none held releases nothing; a get after it is refused"),
    Plan("exit-held", ("get:3", "run", "put:1", "unhold", "get:1", "put:2", "sync"), hold=True,
         what="the mm exits (the probe's pin dropped) with 2 references held: release once, a get refused, "
              "free_notifier after the last put"),
    Plan("exit", ("get:2", "run", "get:1", "put:2", "sync"), hold=False,
         what="the workload exits with 2 references held: release in its own exit, a get refused, "
              "free_notifier after the last put"),
)
# The self-test: one put after the last reference is gone.
OVERPUT_PLANS = (
    Plan("overput", ("get:2", "run", "put:2", "overput", "sync", "unhold"), hold=True,
         what="one mmu_notifier_put too many, on purpose: the kernel WARNs, the model names the put"),
)


@dataclass(frozen=True)
class Step:
    """One line of nhctl getput: a step and the module's answer (`run` asks the module nothing:
    its sub_id, users and refs are 0)."""

    step: str
    count: int
    ret: int          # 0, or -1 with errno
    errno: int
    sub_id: int
    users: int
    refs: int

    @staticmethod
    def parse(line: Mapping[str, Any], source: str) -> "Step":
        step = field(line, "step", str, source)
        if step not in STEPS:
            raise GuestDataError(source, f"unknown step {step[:40]!r} in", json.dumps(line)[:200])

        def num(key: str, hi: int, lo: int = 0) -> int:
            return int_field(line, key, source, lo=lo, hi=hi)

        return Step(step=step, count=num("count", MAX_COUNT), ret=num("ret", 0, lo=-1), errno=num("errno", MAX_ERRNO),
                    sub_id=num("sub_id", U32_MAX), users=num("users", U32_MAX), refs=num("refs", U32_MAX))

    def word(self) -> str:
        """The step as nhctl was given it."""
        return f"{self.step}:{self.count}" if self.step in COUNTED else self.step


@dataclass
class GetPutRun:
    plan: Plan
    steps: list[Step]
    workload: WorkloadRun


def parse_getput_output(plan: Plan, stdout: str) -> tuple[list[Step], list[dict[str, Any]], ProbeStats]:
    """nhctl getput's lines: its steps (which must be the plan's), the workload's lines, and the
    probe's counters (the last line)."""
    source = f"{plan.name}: nhctl getput"
    lines = parse_json_lines(stdout, source)
    if not lines:
        raise GuestDataError(source, "no output at all")
    # nhctl's own failure is a last line with an error and no op.
    if "error" in lines[-1] and lines[-1].get("op") is None:
        raise GuestError(f"{plan.name}: nhctl failed: {str(lines[-1]['error'])[:300]}")
    stats = ProbeStats.parse(lines[-1], source, workload=True)
    steps = [Step.parse(line, source) for line in lines[:-1] if line.get("op") == "gp-step"]
    ran = tuple(s.word() for s in steps)
    if ran != plan.steps:
        raise GuestDataError(source, f"ran the steps {' '.join(ran)[:200]!r}, not the plan's {' '.join(plan.steps)!r}")
    workload = [line for line in lines[:-1] if line.get("op") != "gp-step"]
    if (stats.exit_status, stats.signal) != (0, 0):
        errors = [str(line["error"])[:300] for line in workload if "error" in line]
        how = f"was killed by signal {stats.signal}" if stats.signal else f"exited with status {stats.exit_status}"
        raise GuestError(f"{plan.name}: workload {how}{': ' + errors[0] if errors else ''}")
    return steps, workload, stats


def run_plan(guest: Guest, plan: Plan) -> GetPutRun:
    argv = [NHCTL, "getput", "--events", EVENTS_FILE, *(["--hold"] if plan.hold else []), *plan.steps,
            "--", MMOPS, *WORKLOAD]
    result = guest.run(argv, timeout=COMMAND_TIMEOUT)
    steps, lines, stats = parse_getput_output(plan, result.stdout)
    note_late_exec(guest, plan.name, stats)
    events = guest.run(["cat", EVENTS_FILE])
    if not events.ok:
        raise GuestError(f"{plan.name}: reading {EVENTS_FILE} failed: {events.stderr.strip()[:300]}")
    records = parse_records(events.stdout_bytes, f"{plan.name}: {EVENTS_FILE}")
    pid, ops = parse_mmops_ops(guest, lines, mmops_source(plan.name))
    workload = WorkloadRun(name=plan.name, lines=lines, pid=pid, ops=ops, records=records, stats=stats)
    return GetPutRun(plan=plan, steps=steps, workload=workload)


def recorded_calls(plan: Plan, records: Sequence[Record]) -> list[str]:
    """The probe recorded every call the plan made: a stream that lacks them would pass the model
    with nothing to judge.  DETACH adds a synchronize of its own, so that count is a minimum."""
    asked = plan.calls()
    seen = Counter(r.callback for r in records)
    problems = []
    for kind, callback, exact in (("get", Callback.GET, True), ("put", Callback.PUT, True),
                                  ("sync", Callback.SYNCHRONIZE, False)):
        want = asked[kind] + (asked["overput"] if kind == "put" else 0)
        got = seen[callback]
        if got < want or (exact and got != want):
            problems.append(f"{plan.name}: the probe recorded {got} {callback.name.lower()} calls, the plan made "
                            f"{want}: the stream does not show what was done")
    if not seen[Callback.ALLOC_NOTIFIER]:
        problems.append(f"{plan.name}: no alloc_notifier at all: the plan's gets never reached the kernel")
    return problems


def describe(judgement: GetPutJudgement) -> str:
    """The subscriptions' lifetimes in a line, for the notes."""
    parts = []
    for sub in judgement.subscriptions:
        released = f", release #{sub.release.seq}" if sub.release else ""
        freed = f", free_notifier #{sub.free.seq}" if sub.free else ", never freed"
        last = f", last put #{sub.last_put.seq}" if sub.last_put else ""
        parts.append(f"#{sub.id}: alloc_notifier #{sub.alloc.seq}{released}{last}{freed}")
    exited = f"; exit #{judgement.exit.seq}" if judgement.exit else ""
    return "; ".join(parts) + exited


def judge_plan(run: GetPutRun, features: Features, out_dir: Path) -> tuple[list[str], str]:
    """Findings (the usual model on the reference notifier, then the get/put model) and a note."""
    name = run.plan.name
    findings, judgement = judge_run(run.workload, features, out_dir)
    getput = judge_get_put(run.workload.records)
    findings += [format_finding(name, f) for f in getput.findings]
    findings += recorded_calls(run.plan, run.workload.records)
    (out_dir / f"{name}.steps.json").write_text(json.dumps([asdict(s) for s in run.steps], indent=1) + "\n")
    (out_dir / f"{name}.getput.json").write_text(json.dumps(
        {"findings": [f.to_json() for f in getput.findings], "subscriptions": describe(getput)}, indent=1) + "\n")
    note = (f"{name}: {run.plan.what}; {len(run.workload.records)} records, {judgement.checked_ops} operations "
            f"checked; {describe(getput)}")
    return findings, note


class GetPut:
    name = "get-put"
    description = ("mmu_notifier_get/put: one alloc_notifier for N gets, each event once, release once at exit, "
                   "free_notifier after the last put and before mmu_notifier_synchronize() returns, gets refused "
                   "after exit")
    knobs: frozenset[str] = frozenset()
    needs: tuple[str, ...] = PROBE_NEEDS
    plans: tuple[Plan, ...] = PLANS

    def run(self, ctx: ScenarioContext) -> Verdict:
        load_probe(ctx.guest)
        findings: list[str] = []
        notes: list[str] = []
        for plan in self.plans:
            run = run_plan(ctx.guest, plan)
            plan_findings, note = judge_plan(run, ctx.features, ctx.out_dir)
            findings += plan_findings
            notes.append(note)
        return Verdict.from_findings(findings, notes)


class GetPutOverput(GetPut):
    name = "get-put-overput"
    description = ("(self-test, not in the default configs) one mmu_notifier_put too many: must fail with the "
                   "kernel's WARN in mmu_notifier_put and the model's gp-put finding")
    plans = OVERPUT_PLANS
