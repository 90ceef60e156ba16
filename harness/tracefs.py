"""A tracefs instance of the harness's own (nh-cov: harness/coverage.py; nh-halt:
harness/kvm/halt_trace.py; nh-young: harness/scenarios/youngtrace.py): the shell that makes it and
removes it with its kprobes, the collection script, its output split into the events lost and the
trace, and the trace's event lines.

The trace is guest text: a line that is not an event of the instance is an error, and so is an
event lost to a full buffer (the judgement would be made on a trace with a hole in it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Collection, Iterator

from harness.events import parse_overruns
from harness.guest_data import GuestDataError

_LOST = re.compile(r"CPU:\d{1,4} \[LOST \d{1,20} EVENTS\]", re.ASCII)
TRACING = "/sys/kernel/tracing"
# An event line up to its timestamp's colon and the space after it: comm-pid, the tgid column when
# the record-tgid option is on, [cpu], the irq/preempt flags, the timestamp.  ASCII only: ftrace
# prints digits and symbol names in ASCII, and int() must not meet other digits.
HEADER = (r"^\s*(?P<comm>.{0,64}?)-(?P<pid>\d{1,7})\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d{1,4})\]\s+"
          r"(?:[^\s\[\]]{1,16}\s+)?(?P<ts>\d{1,12}\.\d{1,9}):\s+")


def instance_path(name: str) -> str:
    return f"{TRACING}/instances/{name}"


def remove_script(instance: str, group: str, kprobes: Collection[str]) -> str:
    """Shell that disables group `group`'s events in `instance`, removes the instance and deletes
    the group's `kprobes` (only those: other groups' probes stay); sets T, I and G for what follows."""
    script = (f'T={TRACING}; I={instance}; G={group}; '
              'if [ -d "$I" ]; then for f in "$I"/events/$G/*/enable; do [ -e "$f" ] && echo 0 > "$f"; done; '
              'rmdir "$I" || exit 1; fi; ')
    if kprobes:
        script += (f'for n in {" ".join(kprobes)}; do if [ -d "$T/events/$G/$n" ]; then '
                   'echo "-:$G/$n" >> "$T/kprobe_events" || exit 1; fi; done; ')
    return script


def make_script(buffer_kb: int, stacktrace: bool = False) -> str:
    """Shell that makes instance $I with `buffer_kb` per CPU; clock mono, so the per-CPU buffers
    merge in time order even when a task moves between CPUs."""
    return (f'mkdir "$I" || exit 1; echo {buffer_kb} > "$I/buffer_size_kb" && echo mono > "$I/trace_clock" '
            + ('&& echo 1 > "$I/options/stacktrace" ' if stacktrace else '') + '|| exit 1; ')


def collect_script(instance: str, stats_end: str) -> str:
    """Reads the trace since the last collection and empties the buffer: the per-CPU stats (overruns),
    a `stats_end` line, then the trace; tracing is on again afterwards."""
    return (f'I={instance}; [ -d "$I" ] || {{ echo "no $I" >&2; exit 1; }}; echo 0 > "$I/tracing_on"; '
            f'cat "$I"/per_cpu/cpu*/stats; echo {stats_end}; cat "$I/trace"; echo > "$I/trace"; '
            f'echo 1 > "$I/tracing_on"')


def split_collection(out: str, instance: str, stats_end: str, source: str) -> tuple[int, str]:
    """collect_script's output: (events lost to a full buffer, the trace text)."""
    stats, marker, trace = out.partition(stats_end + "\n")
    if not marker:
        raise GuestDataError(source, f"no {stats_end!r} line between the per-CPU stats and the trace", out)
    return parse_overruns(stats, f"{instance}/per_cpu/cpu*/stats"), trace


@dataclass(frozen=True)
class EventLines:
    """What the instance's event lines look like, and what each kind of stray line is called."""

    header: re.Pattern[str]     # an event line, its name in the group `event`
    events: Collection[str]     # the events the instance has on
    max_line: int               # no event of them prints a longer line
    lost: str                   # what a lost event would do to the judgement
    too_long: str
    not_event: str


def event_lines(text: str, source: str, form: EventLines) -> Iterator[tuple[str, re.Match[str]]]:
    """The `trace` file's event lines, in order, each with its header match; ftrace's comments and
    blank lines are passed over."""
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if _LOST.fullmatch(line.strip()):
            raise GuestDataError(source, f"the ring buffer lost events; {form.lost}", line)
        if len(line) > form.max_line:
            raise GuestDataError(source, form.too_long, line)
        m = form.header.match(line)
        if m is None or m["event"] not in form.events:
            raise GuestDataError(source, form.not_event, line)
        yield line, m
