"""Running a workload under the probe, and judging what it saw.

One SSH command does the whole run inside the guest (nhctl run: start the
workload, attach after its exec, wait, detach, drain the ring), so a run
costs one round trip however slow the guest is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.artifacts.guest_build import GUEST_PROBE, MMOPS, NHCTL
from harness.errors import GuestError
from harness.events import ABI_VERSION, RECORD_SIZE, Record, parse_records
from harness.guest import Guest
from harness.guest_data import (U64_MAX, GuestDataError, int_field, only, parse_int, parse_json_line,
                                parse_json_lines)
from harness.model.expect import Judgement, judge
from harness.model.findings import Finding
from harness.model.ops import ModelError, Op, parse_ops
from harness.model.versions import Features

PARAMS = "/sys/module/nh_probe/parameters"
EVENTS_FILE = "/tmp/nh-events.bin"
CORRUPT = {"off": 0, "drop-end": 1, "shrink-range": 2}


def load_probe(guest: Guest, corrupt: str = "off") -> None:
    """Load nh_probe (again, if loaded with another corruption setting) and check its layout."""
    want = CORRUPT[corrupt]
    loaded = guest.run(["cat", f"{PARAMS}/corrupt"])
    if loaded.ok and parse_int(loaded.stdout, f"{PARAMS}/corrupt") == want:
        return
    if loaded.ok:
        guest.check(["rmmod", "nh_probe"])
    result = guest.run(["insmod", GUEST_PROBE, f"corrupt={want}"])
    if not result.ok:
        raise GuestError(f"loading the probe module failed: {(result.stderr or result.stdout).strip()}; "
                         f"kernel log: {guest.run('dmesg | tail -3').stdout.strip()}")
    abi = parse_int(guest.read_text(f"{PARAMS}/abi_version"), f"{PARAMS}/abi_version", lo=0)
    size = parse_int(guest.read_text(f"{PARAMS}/record_size"), f"{PARAMS}/record_size", lo=0)
    if (abi, size) != (ABI_VERSION, RECORD_SIZE):
        raise GuestError(f"record layout mismatch: the module has ABI {abi} with {size}-byte records, "
                         f"the harness expects ABI {ABI_VERSION} with {RECORD_SIZE}-byte records")


@dataclass(frozen=True)
class ProbeStats:
    """nhctl's counters: records the probe wrote, dropped (ring full) and handed out; after
    `nhctl run`, also how the workload ended (exit status -1 when a signal ended it)."""

    written: int
    dropped: int
    read: int
    exit_status: int = 0
    signal: int = 0
    # How long after the exec pipe's EOF nhctl still saw the pre-exec program (0: not at all).
    exec_late_us: int = 0

    @staticmethod
    def parse(line: Mapping[str, Any], source: str, workload: bool) -> "ProbeStats":
        if line.get("op") != "probe-stats":
            raise GuestDataError(source, "expected nhctl's probe-stats line, got", json.dumps(line))

        def count(key: str) -> int:
            return int_field(line, key, source, lo=0, hi=U64_MAX)

        stats = ProbeStats(written=count("written"), dropped=count("dropped"), read=count("read"))
        if not workload:
            return stats
        return replace(stats, exit_status=int_field(line, "exit_status", source, lo=-1, hi=255),
                       signal=int_field(line, "signal", source, lo=0, hi=127),
                       exec_late_us=int_field(line, "exec_late_us", source, default=0, lo=0, hi=U64_MAX))


def mmops_source(run: str) -> str:
    """How errors name a workload run's output."""
    return f"{run}: mmops"


@dataclass
class WorkloadRun:
    name: str
    lines: list[dict[str, Any]]
    pid: int
    ops: list[Op]
    records: list[Record]
    stats: ProbeStats

    def only_op(self, kind: str) -> Op:
        """The run's one `kind` operation: the script asked for one, so none or two is bad output."""
        return only([op for op in self.ops if op.kind == kind], f"{kind!r} operation", mmops_source(self.name))


def parse_mmops_ops(guest: Guest, lines: list[dict[str, Any]], source: str) -> tuple[int, list[Op]]:
    """mmops's operation lines: (its pid, its ops), no op's range wider than the guest's memory."""
    return parse_ops(lines, source=source, max_range=guest.memory_mib << 20)


def run_mmops(guest: Guest, name: str, script: Sequence[str], attach: Sequence[str] = (),
              timeout: float = 120.0, killed_by: int = 0) -> WorkloadRun:
    """Run mmops under the probe.  `killed_by`: the signal the workload is meant to die of (the OOM
    killer's SIGKILL); any other ending is an error carrying the workload's last words."""
    argv = [NHCTL, "run", "--events", EVENTS_FILE, *attach, "--", MMOPS, *script]
    result = guest.run(argv, timeout=timeout)
    source = mmops_source(name)
    lines = parse_json_lines(result.stdout, source)
    # nhctl's own failure is a last line with an error and no op.
    if not lines or "error" in lines[-1] and lines[-1].get("op") is None:
        detail = str(lines[-1]["error"])[:300] if lines else (result.stderr.strip()[-300:]
                                                             or f"exit status {result.exit_status}")
        raise GuestError(f"{name}: nhctl failed: {detail}")
    stats = ProbeStats.parse(lines[-1], f"{name}: nhctl run", workload=True)
    note_late_exec(guest, name, stats)
    if (stats.exit_status, stats.signal) != ((-1, killed_by) if killed_by else (0, 0)):
        raise GuestError(_workload_ending(name, stats, lines, killed_by))
    records = parse_records(guest.run(["cat", EVENTS_FILE]).stdout_bytes, f"{name}: {EVENTS_FILE}")
    pid, ops = parse_mmops_ops(guest, lines[:-1], source)
    return WorkloadRun(name=name, lines=lines, pid=pid, ops=ops, records=records, stats=stats)


def note_late_exec(guest: Guest, name: str, stats: ProbeStats) -> None:
    """A workload whose exec was not done when its exec pipe said so: nhctl waited before attaching,
    and the row says so (the kernel closed a close-on-exec file before installing the new mm)."""
    if stats.exec_late_us:
        guest.notes.append(f"{name}: the workload had not exec'd when its close-on-exec pipe closed; "
                           f"nhctl waited {stats.exec_late_us} us before attaching")


def _workload_ending(name: str, stats: ProbeStats, lines: list[dict[str, Any]], killed_by: int) -> str:
    """How the workload ended when that was not the plan, with its first error and last report."""
    errors = [str(l["error"])[:300] for l in lines if "error" in l]
    last = [l for l in lines[:-1] if "error" not in l][-1:]
    how = (f"was killed by signal {stats.signal}" if stats.signal
           else f"exited with status {stats.exit_status}")
    expected = f" (expected to be killed by signal {killed_by})" if killed_by else ""
    return (f"{name}: workload {how}{expected}{': ' + errors[0] if errors else ''}"
            f"{'; last report: ' + json.dumps(last[0])[:300] if last else ''}")


def format_finding(run: str, f: Finding) -> str:
    """One finding as report text: the line first (summaries show only it), then the evidence."""
    text = f"{run}: {f.line()}"
    if f.expected:
        text += f"\n  expected: {f.expected}"
    if f.observed:
        text += f"\n  observed: {f.observed}"
    if f.window:
        text += "\n  records:\n" + "\n".join(f"    {w}" for w in f.window)
    return text


def stream_problems(name: str, stats: ProbeStats, records: list[Record]) -> list[str]:
    """The probe's own honesty checks: nothing dropped, everything handed out arrived."""
    problems = []
    if stats.dropped:
        problems.append(f"{name}: the probe's ring was full and dropped {stats.dropped} records; "
                        f"the trace is incomplete")
    if stats.read != len(records):
        problems.append(f"{name}: the module handed out {stats.read} records but {len(records)} arrived")
    return problems


def detach_and_drain(guest: Guest) -> tuple[ProbeStats, list[Record]]:
    """Detach the probe (attached with `nhctl attach`), drain its ring, and read its counters after
    the drain, in one round trip: the counters' JSON line, then the raw records."""
    out = guest.run(["sh", "-c", f"{NHCTL} detach; {NHCTL} read > {EVENTS_FILE} && {NHCTL} stats && "
                                 f"cat {EVENTS_FILE}"])
    if not out.ok:
        raise GuestError(f"draining the probe failed: {(out.stderr or out.stdout).strip()[:300]}")
    line, _, raw = out.stdout_bytes.partition(b"\n")
    stats = ProbeStats.parse(parse_json_line(line, "nhctl stats"), "nhctl stats", workload=False)
    return stats, parse_records(raw, EVENTS_FILE)


def judge_run(run: WorkloadRun, features: Features, out_dir: Path, nonblocking_pids: frozenset[int] = frozenset(),
              failing: bool = False) -> tuple[list[str], Judgement]:
    """The model's findings on one run, plus the probe's own honesty checks; evidence to out_dir."""
    findings = stream_problems(run.name, run.stats, run.records)
    try:
        judgement = judge(run.records, run.ops, run.pid, features, nonblocking_pids=nonblocking_pids,
                          failing=failing)
    except ModelError as e:
        raise GuestError(f"{run.name}: {e}") from None
    findings += [format_finding(run.name, f) for f in judgement.findings]
    base = out_dir / run.name
    (base.with_suffix(".ops.json")).write_text(json.dumps(run.lines, indent=1) + "\n")
    (base.with_suffix(".events.txt")).write_text("".join(r.describe() + "\n" for r in run.records))
    (base.with_suffix(".findings.json")).write_text(
        json.dumps([f.to_json() for f in judgement.findings], indent=1) + "\n")
    return findings, judgement
