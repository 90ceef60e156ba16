"""Call-site coverage: which kernel call sites started the notifier windows (and asked about young
bits) while a scenario ran, recorded by ftrace in the guest and mapped to the version's table of
call sites (harness/model/callsites.py).

In the guest, kprobes on the notifier core's entry points record a kernel stack per call, in a
tracefs instance of their own (`nh-cov`) so that the top-level buffer stays the KVM scenarios'.
The notifier core is entered only for an mm that has notifiers (the probe's workload, KVM's VMM),
so every stack belongs to a watched mm.  The runner runs SETUP_SCRIPT once per boot, COLLECT_SCRIPT
after each scenario (it reads the stacks and empties the buffer), and TEARDOWN_SCRIPT before
anything else wants the kprobes gone.

What ftrace prints (6.1.0-57 and 6.12.117 cloud kernels, tests/data/ftrace/; the event is one line):

       mmops-157     [001] .....     3.882645: mn_start: (__mmu_notifier_invalidate_range_start+0x0/0x190)
                                                   mm=0xff28e42c02ad2880 start=0x7e0000003000 end=0x7e0000008000 event=1
       mmops-157     [001] .....     3.882718: <stack trace>
     => __mmu_notifier_invalidate_range_start
     => zap_page_range_single
     => do_madvise

A stack is written to the same per-CPU buffer right after its event, but `trace` merges the CPUs
by time, so another CPU's lines can come between an event and its stack: a stack is paired with
the last event of its CPU.

Everything here is text from the guest: a line that is not what ftrace prints is counted and
skipped, never trusted and never fatal.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

from harness.guest_data import U64_MAX
from harness.model.callsites import ENTRY_POINTS, JUDGED_BY, CallSite, SiteTable, frame_name, resolve_frames, sites_for
from harness.printable import printable
from harness.tracefs import HEADER, collect_script, instance_path, make_script, remove_script

INSTANCE = instance_path("nh-cov")
GROUP = "nhcov"
# kprobe event name -> the entry point it is placed on, and its fetch arguments (x86-64: the first
# three arguments are %di, %si, %dx).
PROBES: Mapping[str, tuple[str, str]] = {
    "mn_start": ("__mmu_notifier_invalidate_range_start", ""),   # RANGE_ARGS_BTF or RANGE_ARGS_61
    "mn_cfy": ("__mmu_notifier_clear_flush_young", "mm=%di:x64 start=%si:x64 end=%dx:x64"),
    "mn_cy": ("__mmu_notifier_clear_young", "mm=%di:x64 start=%si:x64 end=%dx:x64"),
    "mn_ty": ("__mmu_notifier_test_young", "mm=%di:x64 start=%si:x64"),
}
# The range's fields: through BTF where the kernel's kprobes read it (6.12), else at 6.1's offsets
# of struct mmu_notifier_range {vma, mm, start, end, flags, event, owner}, on 6.1 only: no other
# layout has been checked against a guest.
RANGE_ARGS_BTF = "mm=range->mm start=range->start end=range->end event=range->event"
RANGE_ARGS_61 = "mm=+8(%di):x64 start=+16(%di):x64 end=+24(%di):x64 event=+36(%di):u32"
# Per CPU; reclaiming 8 MiB makes about 6000 stacks, 1.2 MiB of ring buffer.
BUFFER_KB = 8192
STATS_END = "--nh-cov--"

_NAMES = " ".join(PROBES)


def _define(name: str) -> str:
    func, args = PROBES[name]
    return f'echo "p:$G/{name} {func} {args}" >> kprobe_events || exit 1; '


# Places the kprobes (replacing any left by an earlier run), makes the instance, enables them there.
# Prints `range-args btf|6.1|none` and one `probe NAME` line per probe enabled; exits non-zero if
# tracefs, the instance or a probe cannot be set up.
SETUP_SCRIPT = (
    remove_script(INSTANCE, GROUP, PROBES)
    + 'cd "$T" || exit 1; '
    + make_script(BUFFER_KB, stacktrace=True)
    + f'if echo "p:$G/mn_start {PROBES["mn_start"][0]} {RANGE_ARGS_BTF}" >> kprobe_events 2>/dev/null; then '
    'echo "range-args btf"; else case "$(uname -r)" in '
    f'6.1.*) A="{RANGE_ARGS_61}"; echo "range-args 6.1";; *) A=; echo "range-args none";; esac; '
    f'echo "p:$G/mn_start {PROBES["mn_start"][0]} $A" >> kprobe_events || exit 1; fi; '
    + "".join(_define(n) for n in PROBES if n != "mn_start")
    + f'for n in {_NAMES}; do echo 1 > "$I/events/$G/$n/enable" || exit 1; echo "probe $n"; done'
)

# Reads the stacks since the last collection and empties the buffer: the per-CPU stats (overruns:
# stacks lost to a full buffer), a STATS_END line, then the trace.
COLLECT_SCRIPT = collect_script(INSTANCE, STATS_END)

# Removes the instance and the kprobes (KVM's `echo > kprobe_events` fails with EBUSY while they are
# enabled anywhere, and would delete them otherwise).
TEARDOWN_SCRIPT = remove_script(INSTANCE, GROUP, PROBES) + "true"

# Bounds on guest text: a line or a frame longer than this is not what ftrace prints.
MAX_LINE = 4096
MAX_FRAME = 256
MAX_FRAMES = 128
MAX_ARGS = 16

# ASCII only: ftrace prints digits and symbol names in ASCII, and int() must not meet other digits.
_HEADER = re.compile(HEADER + r"(?P<rest>.*)$", re.ASCII)
_EVENT = re.compile(r"^(?P<event>[\w.]{1,64}):\s?(?P<msg>.*)$", re.ASCII)
_STACK_HEADER = "<stack trace>"
_FRAME = re.compile(r"^ => (?P<frame>[\w.$]{1,%d}(?:\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+)?(?: \[[\w-]+\])?)$"
                    % MAX_FRAME, re.ASCII)
_ARG = re.compile(r"(?<![\w(])(?P<key>[a-z_]\w{0,31})=(?P<value>0x[0-9a-fA-F]{1,16}|\d{1,20})(?=\s|$)", re.ASCII)
_STAT = re.compile(r"^(?P<key>overrun|dropped events):\s*(?P<value>\d{1,20})\s*$", re.ASCII)
# Lines of other events ftrace writes into the instance: not hits, not garbage.
_OTHER_EVENTS = frozenset({"tracing_mark_write"})
_OTHER = "other"


@dataclass
class Stack:
    """One call of a notifier entry point: who made it and the kernel stack, innermost first."""

    probe: str                      # the kprobe event: mn_start, mn_cfy, mn_cy, mn_ty
    pid: int
    comm: str
    cpu: int
    time_s: float                   # trace_clock mono: CLOCK_MONOTONIC seconds
    args: dict[str, int] = field(default_factory=dict)   # the fetch arguments: start, end, event, mm
    frames: tuple[str, ...] = ()    # as printed (offsets and suffixes kept); empty if its stack was lost
    count: int = 1

    @property
    def entry(self) -> str:
        return PROBES[self.probe][0]

    @property
    def size(self) -> Optional[int]:
        """end - start, when the probe fetched both (young callbacks: 4 KiB or 2 MiB)."""
        start, end = self.args.get("start"), self.args.get("end")
        return end - start if start is not None and end is not None and end >= start else None

    def top(self, n: int = 3) -> str:
        """The first frames below the tracer's own, for a report."""
        frames = list(self.frames)
        at = next((i for i, f in enumerate(frames) if frame_name(f) == self.entry), -1)
        return " < ".join(frames[at + 1:at + 1 + n]) or "(no stack)"


# Frames of a stack that belongs to no hit land here.
_DISCARD = Stack(probe="mn_start", pid=0, comm="", cpu=0, time_s=0.0)


@dataclass
class ParsedTrace:
    stacks: list[Stack]
    skipped: int = 0            # lines that are nothing ftrace prints for these probes
    unpaired: int = 0           # a hit whose stack never came, or a stack with no hit before it
    overruns: int = 0           # events lost to a full buffer (COLLECT_SCRIPT's stats: overrun, dropped)

    @property
    def complete(self) -> bool:
        return not (self.skipped or self.unpaired or self.overruns)


def parse_stacks(text: str) -> list[Stack]:
    """The hits of the coverage probes in ftrace's `trace` text, each with its stack."""
    return parse_trace(text).stacks


def parse_trace(text: str) -> ParsedTrace:
    """parse_stacks, with the count of what could not be read."""
    out = ParsedTrace(stacks=[])
    # Per CPU, the last event line: a hit of ours, _OTHER (a marker, whose stack, if the instance
    # records one, is of no interest), or absent.
    last: dict[int, Union[Stack, str]] = {}
    filling: Optional[Stack] = None           # the stack whose frames the next lines are
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            filling = None
            continue
        if len(line) > MAX_LINE:
            out.skipped += 1
            filling = None
            continue
        if line.startswith(" => "):
            m = _FRAME.match(line)
            if m is None or filling is None or len(filling.frames) >= MAX_FRAMES:
                out.skipped += 1
            elif filling is not _DISCARD:
                filling.frames += (m["frame"],)
            continue
        filling = None
        h = _HEADER.match(line)
        if h is None:
            out.skipped += 1
            continue
        cpu, pid = int(h["cpu"]), int(h["pid"])
        rest = h["rest"].rstrip()
        before = last.pop(cpu, None)
        if rest == _STACK_HEADER:
            if isinstance(before, Stack) and not before.frames and before.pid == pid:
                filling = before
            elif before == _OTHER:
                filling = _DISCARD
            else:
                # a stack with no hit of its CPU before it; a hit there, of another task, lost its own
                out.unpaired += 2 if isinstance(before, Stack) and not before.frames else 1
                filling = _DISCARD
            continue
        if isinstance(before, Stack) and not before.frames:
            out.unpaired += 1          # the previous hit on this CPU got no stack
        e = _EVENT.match(rest)
        if e is None or (e["event"] not in PROBES and e["event"] not in _OTHER_EVENTS):
            out.skipped += 1
            continue
        if e["event"] not in PROBES:
            last[cpu] = _OTHER
            continue
        stack = Stack(probe=e["event"], pid=pid, comm=printable(h["comm"].strip()[:64]), cpu=cpu,
                      time_s=float(h["ts"]), args=_args(e["msg"]))
        out.stacks.append(stack)
        last[cpu] = stack
    out.unpaired += sum(1 for s in last.values() if isinstance(s, Stack) and not s.frames)
    return out


def _args(msg: str) -> dict[str, int]:
    args: dict[str, int] = {}
    for m in _ARG.finditer(msg):
        value = int(m["value"], 0)
        if value <= U64_MAX and len(args) < MAX_ARGS:
            args[m["key"]] = value
    return args


def parse_collect(text: str) -> ParsedTrace:
    """COLLECT_SCRIPT's output: the overruns from the stats, then the trace."""
    stats, marker, trace = text.partition(STATS_END + "\n")
    if not marker:
        # No separator: the script did not get that far; nothing in it is a trace to trust.
        return ParsedTrace(stacks=[], skipped=len(text.splitlines()))
    parsed = parse_trace(trace)
    for line in stats.splitlines():
        m = _STAT.match(line)
        if m:
            parsed.overruns += int(m["value"])
    return parsed


@dataclass
class Hits:
    """One scenario's call sites: how often each was seen, and what could not be named."""

    sites: dict[str, int]
    unresolved: dict[str, int]      # "probe frame < caller < caller: why" -> count

    def as_result_fields(self) -> dict[str, Any]:
        """The two fields a result row of results.json carries."""
        return {"callsites": dict(sorted(self.sites.items())),
                "callsites_unresolved": [f"{n}x {what}" for what, n in sorted(self.unresolved.items())]}


def sites_hit(stacks: Sequence[Stack], version: tuple[int, int]) -> Hits:
    """Map each stack to the version's call site; the rest, by their top frames, so nothing is hidden."""
    sites: Counter[str] = Counter()
    unresolved: Counter[str] = Counter()
    for s in stacks:
        r = resolve_frames(s.frames, version, entry=s.entry, size=s.size)
        if r.site is not None:
            sites[r.site.name] += s.count
        else:
            problem = r.problem if s.frames else "its stack was lost"
            unresolved[printable(f"{s.probe} {s.top()}: {problem}")] += s.count
    return Hits(sites=dict(sites), unresolved=dict(unresolved))


# --- the coverage map of a run ------------------------------------------------------------------

_RELEASE = re.compile(r"^(\d{1,3})\.(\d{1,3})")


@dataclass
class _Kernel:
    release: str
    version: tuple[int, int]
    seen: dict[str, list[str]] = field(default_factory=dict)        # site -> scenarios that reached it
    unresolved: list[tuple[str, str]] = field(default_factory=list)  # (scenario, what)
    unknown: dict[str, list[str]] = field(default_factory=dict)     # a site name not in the table
    without: list[str] = field(default_factory=list)                # scenarios with no coverage data


def _kernels(results: Sequence[Any]) -> tuple[list[_Kernel], list[str]]:
    kernels: dict[str, _Kernel] = {}
    problems: list[str] = []
    for i, row in enumerate(results):
        if not isinstance(row, dict):
            problems.append(f"result #{i} is not an object")
            continue
        release, scenario = row.get("kernel"), row.get("scenario")
        if not isinstance(release, str) or not isinstance(scenario, str):
            problems.append(f"result #{i} has no kernel or scenario")
            continue
        m = _RELEASE.match(release)
        if m is None:
            problems.append(f"{release}: not a kernel release (the kernel never booted?); {scenario} left out")
            continue
        k = kernels.setdefault(release, _Kernel(release, (int(m[1]), int(m[2]))))
        sites = row.get("callsites")
        if not isinstance(sites, dict):
            k.without.append(scenario)
            continue
        table = sites_for(k.version)
        for name, count in sites.items():
            if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
                problems.append(f"{release} {scenario}: callsites[{name!r}] is not a positive count")
                continue
            into = k.seen if table.site(str(name)) is not None else k.unknown
            scenarios = into.setdefault(str(name), [])
            if scenario not in scenarios:
                scenarios.append(scenario)
        unresolved = row.get("callsites_unresolved", [])
        if not isinstance(unresolved, list) or not all(isinstance(w, str) for w in unresolved):
            problems.append(f"{release} {scenario}: callsites_unresolved is not a list of strings")
            continue
        k.unresolved += [(scenario, what) for what in unresolved]
    return list(kernels.values()), problems


def _status(site: CallSite, scenarios: Sequence[str]) -> str:
    if scenarios:
        return "judged" if set(scenarios) & set(JUDGED_BY.get(site.name, ())) else "contract only"
    return "not reached" if site.reachable else "unreachable"


def _section(table: SiteTable, kind: str, k: _Kernel) -> list[str]:
    sites = sorted(table.of_kind(kind), key=lambda s: (s.file, s.name))
    reachable = [s for s in sites if s.reachable]
    reached = [s for s in reachable if k.seen.get(s.name)]
    judged = [s for s in reached if _status(s, k.seen[s.name]) == "judged"]
    beyond = [s for s in sites if not s.reachable and k.seen.get(s.name)]
    more = f", and {len(beyond)} the cloud kernels cannot reach" if beyond else ""
    lines = [f"  {kind} sites: {len(reached)} of {len(reachable)} reachable reached, {len(judged)} judged "
             f"({len(sites)} in all{more})"]
    names = [f"{s.name} ({s.callback})" if s.callback else s.name for s in sites]
    width = max(len(n) for n in names)
    fwidth = max(len(s.file) for s in sites)
    for s, name in zip(sites, names):
        scenarios = k.seen.get(s.name, [])
        judging = set(JUDGED_BY.get(s.name, ()))
        if scenarios:
            detail = " ".join(f"{n}*" if n in judging else n for n in scenarios)
        else:
            detail = s.unreachable or s.reach
        lines.append(f"    {s.file:<{fwidth}}  {name:<{width}}  {_status(s, scenarios):<13}  {detail}")
    return lines


def coverage_map(results_json: Mapping[str, Any]) -> str:
    """Per kernel of a run's results.json: every call site of its version, with the scenarios that
    reached it (`*`: a scenario whose per-operation rules judge that site), or why none did."""
    results = results_json.get("results") if isinstance(results_json, Mapping) else None
    if not isinstance(results, list):
        return "no results in this document\n"
    kernels, problems = _kernels(results)
    out: list[str] = []
    for k in kernels:
        table = sites_for(k.version)
        note = "" if table.verified else (f" (not a version the table was read from: {table.label} is shown "
                                          f"with {table.table_version[0]}.{table.table_version[1]}'s sites)")
        out.append(f"{k.release}{note}")
        if k.without:
            out.append(f"  no call-site data from: {' '.join(k.without)}")
        out += _section(table, "range", k)
        out += _section(table, "young", k)
        for name, scenarios in sorted(k.unknown.items()):
            out.append(f"  not a {table.label} call site: {name} (from {' '.join(scenarios)})")
        if k.unresolved:
            out.append(f"  stacks that name no call site: {len(k.unresolved)}")
            out += [f"    {scenario}: {what}" for scenario, what in k.unresolved]
        out.append("")
    out.append("status: judged = reached by a scenario (marked *) whose per-operation rules check the site's "
               "windows; contract only = reached, checked by the notifier contract alone")
    out += [f"warning: {p}" for p in problems]
    return printable("\n".join(out).rstrip("\n") + "\n")


__all__ = ["COLLECT_SCRIPT", "ENTRY_POINTS", "Hits", "ParsedTrace", "SETUP_SCRIPT", "Stack", "TEARDOWN_SCRIPT",
           "coverage_map", "parse_collect", "parse_stacks", "parse_trace", "sites_hit"]
