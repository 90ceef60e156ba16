"""The shared tracefs pieces: the shell that removes an instance with only its own group's kprobes,
the shell that makes one, the collection's split, and the event line header all three tracers read."""

from __future__ import annotations

import re

import pytest

from harness.guest_data import GuestDataError
from harness.tracefs import HEADER, make_script, remove_script, split_collection


def test_removing_an_instance_deletes_only_its_own_groups_kprobes():
    script = remove_script("/sys/kernel/tracing/instances/nh-x", "nhx", ("a", "b"))
    assert 'I=/sys/kernel/tracing/instances/nh-x; G=nhx;' in script and 'rmdir "$I" || exit 1' in script
    assert 'for n in a b; do' in script and 'echo "-:$G/$n" >> "$T/kprobe_events"' in script
    # Tracepoints only: no kprobe is named, and kprobe_events is not touched at all.
    assert "kprobe_events" not in remove_script("/sys/kernel/tracing/instances/nh-y", "kvm", ())


def test_making_an_instance_sets_its_buffer_and_clock_and_stacks_only_when_asked():
    plain, stacks = make_script(1024), make_script(8192, stacktrace=True)
    assert plain.startswith('mkdir "$I" || exit 1; echo 1024 > "$I/buffer_size_kb"') and "mono" in plain
    assert "options/stacktrace" not in plain and 'echo 1 > "$I/options/stacktrace"' in stacks


@pytest.mark.parametrize("line,comm,pid,cpu,ts", [
    ("       mmops-157     [001] .....     3.882645: mn_start: x", "mmops", "157", "001", "3.882645"),
    ("    minivmm-190 [000] .....  3.569914: kvm_halt_poll_ns: y", "minivmm", "190", "000", "3.569914"),
    ("  kworker/u4:1-events-33  (     33) [001] d..1.  4.1: e: z", "kworker/u4:1-events", "33", "001", "4.1"),
])
def test_the_header_reads_what_ftrace_prints(line, comm, pid, cpu, ts):
    m = re.compile(HEADER + r"(?P<rest>.*)$", re.ASCII).match(line)
    assert m is not None and (m["comm"], m["pid"], m["cpu"], m["ts"]) == (comm, pid, cpu, ts)


def test_a_header_with_a_comm_longer_than_any_task_is_not_an_event():
    assert re.compile(HEADER, re.ASCII).match("x" * 65 + "-1 [000] ..... 1.0: e: z") is None


def test_a_collection_without_its_stats_end_line_is_refused():
    with pytest.raises(GuestDataError, match="no '--end--' line"):
        split_collection("CPU: 0\noverrun: 0\n", "nh-x", "--end--", "nh-x")
