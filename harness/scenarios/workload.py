"""workload: a program of the user's (a syzkaller C reproducer, a test program) under the probe.

The program is copied into the guest over the run's SSH connection and run by
`nhctl run` with the probe attached to it.  With no script of its operations,
the model judges what needs none: the notifier contract (pairing, nesting, end
range equal to start range, blockable everywhere but the OOM reaper, change_pte
and invalidate_range only inside a window on 6.1, `release` once and last,
nothing lost), and the runner adds the console classifier and the taint as for
every scenario.  The program's output and every record stay in the scenario's
directory.  Its exit status is reported, not judged: a reproducer's is
meaningless.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness.artifacts.guest_build import NHCTL
from harness.errors import GuestError
from harness.events import Callback, Record, parse_records
from harness.guest import Guest
from harness.guest_data import GuestDataError, parse_int, parse_json_line
from harness.model.contract import check_contract
from harness.model.versions import Features
from harness.scenarios.base import PROBE_NEEDS, ScenarioContext
from harness.scenarios.probe import (EVENTS_FILE, ProbeStats, format_finding, load_probe, note_late_exec,
                                     stream_problems)
from harness.verdict import Verdict

GUEST_DIR = "/tmp/nh-workload"
STATS_LINE = b'{"op": "probe-stats"'


@dataclass(frozen=True)
class WorkloadJudgement:
    findings: list[str]
    windows: int
    bare_invalidates: int


def judge_workload(records: list[Record], features: Features, stats: ProbeStats,
                   nonblocking_pids: frozenset[int]) -> WorkloadJudgement:
    """The contract rules that need no script of the program's operations.  6.1's mmu_gather flushes
    outside any window (MADV_COLD, MADV_PAGEOUT) are allowed: telling them from a missing window
    needs the operation, which an unscripted program does not say."""
    bare: list[Record] = []

    def gather_flush(r: Record) -> bool:
        bare.append(r)
        return True

    trace = check_contract(records, features, nonblocking_pids=nonblocking_pids, expect_release=True,
                           bare_invalidate=gather_flush)
    findings = stream_problems("workload", stats, records)
    findings += [format_finding("workload", f) for f in trace.findings]
    return WorkloadJudgement(findings=findings, windows=len(trace.pairs), bare_invalidates=len(bare))


def split_output(out: bytes, source: str) -> tuple[bytes, ProbeStats]:
    """The program's own output, and nhctl's counters: its last line, printed after the program
    exited (so the last occurrence is nhctl's, even if the program printed a look-alike)."""
    at = out.rfind(STATS_LINE)
    if at < 0:
        raise GuestDataError(source, "nhctl printed no counters; its output ends", out[-200:])
    return out[:at], ProbeStats.parse(parse_json_line(out[at:].strip(), source), source, workload=True)


def _reaper_pid(guest: Guest) -> int:
    """The OOM reaper's pid: the one task whose non-blockable windows are allowed (0 if none)."""
    result = guest.run(["sh", "-c", "pgrep -x oom_reaper || true"])
    text = result.stdout.split()
    return parse_int(text[0], "pgrep oom_reaper", lo=1) if text else 0


class Workload:
    name = "workload"
    description = ("a program of the user's (path, args) under the probe: the notifier contract, the console "
                   "classifier and taint judge it; its output and every record are kept")
    knobs = frozenset({"path", "args", "probe_corrupt"})
    needs: tuple[str, ...] = PROBE_NEEDS

    def run(self, ctx: ScenarioContext) -> Verdict:
        cfg, guest = ctx.config, ctx.guest
        if not cfg.path:
            return Verdict("error", ("workload: no program given (path: ./repro in the config, or "
                                     "run --workload PATH)",))
        local = Path(cfg.path)
        try:
            data, mode = local.read_bytes(), local.stat().st_mode
        except OSError as e:
            return Verdict("error", (f"workload: cannot read {local}: {e.strerror}",))
        load_probe(guest, cfg.probe_corrupt)
        program = f"{GUEST_DIR}/{local.name}"
        guest.check(["mkdir", "-p", GUEST_DIR])
        guest.ssh.put(data, program, mode | 0o500)
        reaper = _reaper_pid(guest)
        result = guest.run([NHCTL, "run", "--events", EVENTS_FILE, "--", program, *cfg.args], timeout=cfg.timeout_s)
        if not result.ok:
            raise GuestError(f"workload: nhctl run failed with status {result.exit_status}: "
                             f"{(result.stderr or result.stdout).strip()[-300:]}")
        output, stats = split_output(result.stdout_bytes, "workload: nhctl run")
        note_late_exec(ctx.guest, "workload", stats)
        events = guest.run(["cat", EVENTS_FILE])
        records = parse_records(events.stdout_bytes, f"workload: {EVENTS_FILE}")
        (ctx.out_dir / "output.txt").write_bytes(output)
        (ctx.out_dir / "stderr.txt").write_text(result.stderr)
        (ctx.out_dir / "workload.events.txt").write_text("".join(r.describe() + "\n" for r in records))
        judged = judge_workload(records, ctx.features, stats, frozenset({reaper}) if reaper else frozenset())
        how = f"killed by signal {stats.signal}" if stats.signal else f"exited with status {stats.exit_status}"
        notes = [f"{local.name} {json.dumps(list(cfg.args))}: {how}; {len(records)} records, {judged.windows} "
                 f"windows, {sum(r.callback == Callback.RELEASE for r in records)} release; output in output.txt"]
        if judged.bare_invalidates:
            notes.append(f"{judged.bare_invalidates} invalidate_range outside any window allowed (mmu_gather "
                         f"flushes: without the program's operations they cannot be told from a missing window)")
        return Verdict.from_findings(judged.findings, notes)
