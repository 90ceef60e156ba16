"""A guest that answers with garbage: every scenario path that reads guest data ends in a
GuestDataError (or the VMM's own GuestError) that names the source, quickly, and never in a
ValueError, KeyError, IndexError, RecursionError or StopIteration.

The fake SSH session subclasses the real one and answers each command from a table; the fake
minivmm process subclasses the real RemoteProcess, so its answers go through the real read_line.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Optional, Sequence, Union

import pytest

from harness.config import ScenarioConfig
from harness.errors import GuestError, HarnessError
from harness.events import RECORD_SIZE, parse_records
from harness.guest import Guest
from harness.guest_data import GuestDataError
from harness.kvm.ftrace import STATS_END, KvmTrace
from harness.kvm.vmm import Vmm, VmmError
from harness.model.ops import parse_ops
from harness.model.versions import features_for
from harness.scenarios import youngtrace
from harness.scenarios.aging import Aging
from harness.scenarios.base import ScenarioContext
from harness.scenarios.dirty_log import Answer, explore
from harness.scenarios.ksm import Ksm
from harness.scenarios.kvm import KvmKsm, _failed, _stats, read_check, slot_of
from harness.scenarios.memcg import Memcg
from harness.scenarios.oom import MemcgOom
from harness.scenarios.probe import detach_and_drain, load_probe, run_mmops
from harness.vm.ssh import CommandResult, RemoteProcess, SshSession

Reply = Union[str, bytes, tuple[int, Union[str, bytes]]]
PARAMS = "cat /sys/module/nh_probe/parameters"
NHCTL_RUN = "/opt/nh/bin/nhctl run"
A = 0x7E0000000000
START = '{"op": "start", "pid": 5, "t0": 1}'
MAP = '{"op": "map", "name": "A", "start": %d, "end": %d, "thp": false, "anon_huge_kb": 0, "t0": 2, "t1": 3}'
EXIT = '{"op": "exit", "pid": 5, "t0": 9}'
STATS = ('{"op": "probe-stats", "written": 0, "dropped": 0, "read": 0, "attached_pid": 5, "pid": 5, '
         '"exit_status": %d, "signal": %d, "record_size": 64}')


class HostileSsh(SshSession):
    """Answers each command by the longest matching prefix in `answers` (exit status 0 unless given);
    `vmm` are the lines a started minivmm prints."""

    def __init__(self, answers: dict[str, Reply], vmm: Sequence[str] = ()):
        super().__init__(client=None, port=0)  # type: ignore[arg-type]
        self.answers = answers
        self.vmm = list(vmm)

    def run(self, argv, timeout=60.0, stdin=None, watch=None) -> CommandResult:
        command = argv if isinstance(argv, str) else " ".join(argv)
        key = max((k for k in self.answers if command.startswith(k)), key=len, default=None)
        answer = self.answers[key] if key is not None else ""
        status, out = answer if isinstance(answer, tuple) else (0, answer)
        data = out if isinstance(out, bytes) else out.encode()
        return CommandResult(argv=command, exit_status=status, stdout_bytes=data, stderr="", duration_s=0.0)

    def start(self, argv, watch=None, timeout=30.0) -> RemoteProcess:
        return ScriptedVmm(self.vmm)


class ScriptedVmm(RemoteProcess):
    """minivmm's output, all of it already arrived; the real read_line hands it out line by line."""

    def __init__(self, lines: Sequence[str]):
        super().__init__(chan=None, command="minivmm", transport=None, watch=None)  # type: ignore[arg-type]
        self.out = bytearray("".join(line + "\n" for line in lines).encode())
        self.eof = True
        self.sent: list[str] = []

    def send_line(self, line: str) -> None:
        self.sent.append(line)

    def close(self, timeout: float = 10.0) -> Optional[int]:
        return 0


def guest(answers: dict[str, Reply], vmm: Sequence[str] = ()) -> Guest:
    return Guest(ssh=HostileSsh(answers, vmm), release="6.1.0-56-cloud-amd64", accel="tcg")


def context(g: Guest, scenario: str, tmp_path) -> ScenarioContext:
    return ScenarioContext(guest=g, features=features_for((6, 1)), config=ScenarioConfig(scenario), seed=1,
                           out_dir=tmp_path, console_tail=lambda: "")


def refused(action: Callable[[], object], source: str, error: type[HarnessError] = GuestDataError,
            seconds: float = 1.0) -> str:
    """`action` must end in `error` (a GuestError) naming `source`, within `seconds`; its message.
    Any other exception escapes pytest.raises and fails the test."""
    start = time.monotonic()
    with pytest.raises(HarnessError) as e:
        action()
    assert time.monotonic() - start < seconds
    assert isinstance(e.value, error) and isinstance(e.value, GuestError), repr(e.value)
    assert source in str(e.value), str(e.value)
    return str(e.value)


def workload(*lines: str, status: tuple[int, int] = (0, 0)) -> str:
    return "\n".join([START, *lines, EXIT, STATS % status]) + "\n"


# --- the probe module's parameters ---------------------------------------------------------------

@pytest.mark.parametrize("param,text", [
    ("abi_version", "\x00\x01\x02\xff\xfe"), ("abi_version", "\x00garbage"), ("record_size", "64\x00"),
    ("record_size", b"\xde\xad\xbe\xef"), ("record_size", ""), ("abi_version", "9" * 5000),
])
def test_probe_parameters_that_are_not_integers(param, text):
    answers: dict[str, Reply] = {f"{PARAMS}/corrupt": (1, ""), f"{PARAMS}/abi_version": "1\n",
                                   f"{PARAMS}/record_size": f"{RECORD_SIZE}\n"}
    answers[f"{PARAMS}/{param}"] = text
    message = refused(lambda: load_probe(guest(answers)), f"/sys/module/nh_probe/parameters/{param}")
    assert "expected an integer" in message


def test_a_corrupt_parameter_that_is_garbage():
    refused(lambda: load_probe(guest({f"{PARAMS}/corrupt": "\x00garbage"})), "nh_probe/parameters/corrupt")


# --- mmops and nhctl output ----------------------------------------------------------------------

@pytest.mark.parametrize("line", ["[1, 2]", '"x"', "3", "[" * 10000, '{"op": "map", "t0": ' + "7" * 5000 + "}",
                                  '{"op": "map", "t0": NaN}', "\x00\x01binary\xff", "{" + '"a":' * 3000])
def test_workload_lines_that_are_not_objects(line):
    g = guest({NHCTL_RUN: workload(line)})
    refused(lambda: run_mmops(g, "basic", ["map:A:1M"]), "basic: mmops")


@pytest.mark.parametrize("line,problem", [
    ('{"op": "map", "name": "A", "start": %d, "end": %d, "t1": 3}' % (A, A + 4096), "no 't0'"),
    ('{"op": "map", "t0": 1, "t1": 2}', "no 'start'"),
    ('{"op": "munmap", "start": %d, "end": %d, "t0": 1, "t1": 2}' % (A + 4096, A), "reversed range"),
    ('{"op": "munmap", "start": %d, "end": %d, "t0": 1, "t1": 2}' % (A, 1 << 48), "outside"),
    ('{"op": "map", "start": "0", "end": 4096, "t0": 1, "t1": 2}', "'start' is not an integer"),
    ('{"op": "map", "start": 0, "end": 4096, "thp": 1, "t0": 1, "t1": 2}', "'thp' is not a bool"),
    ('{"op": "loop", "count": 3, "t0": 1}', "no 't1'"),
    ('{"op": "touch", "start": 0, "end": 4096, "t0": 5, "t1": 4}', "'t1'"),
    ('{"op": "cow-vmas", "private_vmas": [[1]]}', "private VMA"),
    ('{"op": "cow-vmas", "private_vmas": 7}', "'private_vmas' is not a list"),
    ('{"op": "vmas", "vmas": [{"start": 0, "end": 4096, "perms": "rw-p"}]}', "no 'flags'"),
    ('{"op": "vmas", "vmas": ["x"]}', "a VMA is not a JSON object"),
    ('{"op": 3, "t0": 1}', "'op' is not a str"),
    ('{"t0": 1}', "no 'op'"),
    ('{"op": "munmap", "error": 5}', "'error' is not a str"),
])
def test_workload_lines_without_what_mmops_prints(line, problem):
    g = guest({NHCTL_RUN: workload(line)})
    assert problem in refused(lambda: run_mmops(g, "basic", ["map:A:1M"]), "basic: mmops")


def test_a_map_of_2_to_the_46_bytes_is_refused_before_the_model_sees_it():
    g = guest({NHCTL_RUN: workload(MAP % (0, 2**46))})
    assert "a range of 0x400000000000 bytes" in refused(lambda: run_mmops(g, "basic", ["map:A:1M"]), "basic: mmops")
    lines = [json.loads(START), json.loads(MAP % (0, 2**46))]
    refused(lambda: parse_ops(lines), "mmops")
    refused(lambda: parse_ops(lines[1:2] * 2 + lines[:1], max_range=1 << 30), "mmops")
    assert parse_ops([json.loads(START), json.loads(MAP % (A, A + (1 << 30)))], max_range=1 << 30)


def test_a_start_line_without_a_plausible_pid():
    for start in ('{"op": "start", "t0": 1}', '{"op": "start", "pid": 0, "t0": 1}',
                  '{"op": "start", "pid": 99999999, "t0": 1}'):
        g = guest({NHCTL_RUN: "\n".join([start, STATS % (0, 0)]) + "\n"})
        refused(lambda: run_mmops(g, "basic", ["map:A:1M"]), "basic: mmops")
    refused(lambda: parse_ops([{"op": "exit", "t0": 1}]), "mmops")


@pytest.mark.parametrize("stats", [
    '{"op": "probe-stats", "written": 0, "read": 0, "exit_status": 0, "signal": 0}',
    '{"op": "probe-stats", "written": 0, "dropped": "many", "read": 0, "exit_status": 0, "signal": 0}',
    '{"op": "probe-stats", "written": 0, "dropped": -1, "read": 0, "exit_status": 0, "signal": 0}',
    '{"op": "probe-stats", "written": 0, "dropped": 0, "read": 0, "signal": 0}',
    '{"op": "probe-stats", "written": 0, "dropped": 0, "read": 0, "exit_status": 0, "signal": 1000}',
    '{"op": "probe-stats", "written": 0, "dropped": 0, "read": 0, "exit_status": 0, "signal": 0, "exec_late_us": -1}',
    '{"op": "not-stats"}',
])
def test_nhctl_counters_that_are_garbage(stats):
    g = guest({NHCTL_RUN: "\n".join([START, EXIT, stats]) + "\n"})
    refused(lambda: run_mmops(g, "basic", ["map:A:1M"]), "basic: nhctl run")


@pytest.mark.parametrize("out,source", [
    (b"\x00\xff garbage\n", "nhctl stats"), (b"[1]\n", "nhctl stats"), (b'{"op": "probe-stats"}\n', "nhctl stats"),
    (b"", "nhctl stats"), (b'{"op": "probe-stats", "written": 1, "dropped": 0, "read": 1}\n\x01\x02', "nh-events.bin"),
])
def test_draining_the_probe_with_garbage(out, source):
    refused(lambda: detach_and_drain(guest({"sh -c": out})), source)


def test_a_record_stream_cut_mid_record():
    refused(lambda: parse_records(b"\x00" * (RECORD_SIZE + 3)), "probe event stream")


# --- memcg files ---------------------------------------------------------------------------------

MEMCG = "cat /sys/fs/cgroup/nh-x"


@pytest.mark.parametrize("file,text,read", [
    ("memory.events", "oom 1 2\n", Memcg.events), ("memory.events", "oom_kill x\n", Memcg.events),
    ("memory.events", "oom\n", Memcg.events), ("memory.events", "\x00\x01\x02", Memcg.events),
    ("memory.events", b"oom_kill \xff\n", Memcg.events),
    ("memory.current", "", Memcg.current), ("memory.current", "-5", Memcg.current),
    ("memory.current", "12 MiB", Memcg.current),
    ("cgroup.procs", "12 abc\n", Memcg.procs), ("cgroup.procs", "0\n", Memcg.procs),
    ("cgroup.procs", "1" * 5000, Memcg.procs),
])
def test_memcg_files_with_garbage(file, text, read):
    memcg = Memcg(guest({f"{MEMCG}/{file}": text}), "nh-x", 32)
    refused(lambda: read(memcg), f"/sys/fs/cgroup/nh-x/{file}")


# --- scenarios whose workload lacks the operation they read ---------------------------------------

def test_ksm_without_a_ksm_operation(tmp_path):
    g = guest({f"{PARAMS}/corrupt": "0\n", NHCTL_RUN: workload(MAP % (A, A + (256 << 10)))})
    message = refused(lambda: Ksm().run(context(g, "ksm", tmp_path)), "ksm: mmops")
    assert "expected exactly one 'ksm' operation, found 0" in message


def test_aging_without_a_khugepaged_operation(tmp_path):
    young = f"sh -c T=/sys/kernel/tracing; I={youngtrace.INSTANCE}"       # the young-bit trace's set-up
    collect = f"sh -c I={youngtrace.INSTANCE}"
    g = guest({f"{PARAMS}/corrupt": "0\n", NHCTL_RUN: workload(MAP % (A, A + (4 << 20))), young: "args 6.1\n",
               collect: f"overrun: 0\n{youngtrace.STATS_END}\n"})
    message = refused(lambda: Aging().run(context(g, "aging", tmp_path)), "khugepaged: mmops")
    assert "expected exactly one 'khugepaged' operation, found 0" in message


def test_memcg_oom_without_an_oom_operation(tmp_path):
    g = guest({f"{PARAMS}/corrupt": "0\n", NHCTL_RUN: workload(status=(-1, 9)),
               f"{MEMCG.replace('nh-x', 'nh-reap')}/memory.events": "oom 1\noom_kill 1\n",
               f"{MEMCG.replace('nh-x', 'nh-reap')}/memory.current": "0\n"})
    message = refused(lambda: MemcgOom().run(context(g, "memcg-oom", tmp_path)), "reap: mmops")
    assert "expected exactly one 'oom' operation, found 0" in message


def test_memcg_oom_with_garbage_in_memory_events(tmp_path):
    oom = '{"op": "oom", "start": %d, "end": %d, "reaper_pid": 30, "t0": 3}' % (A, A + (128 << 20))
    g = guest({f"{PARAMS}/corrupt": "0\n", NHCTL_RUN: workload(oom, status=(-1, 9)),
               f"{MEMCG.replace('nh-x', 'nh-reap')}/memory.events": "oom 1\noom_kill\n"})
    refused(lambda: MemcgOom().run(context(g, "memcg-oom", tmp_path)), "nh-reap/memory.events")


# --- minivmm ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("hello,problem", [
    ('{"op": "hello"}', "no 'pid'"), ('{"op": "hello", "pid": "77"}', "'pid' is not an integer"),
    ('{"op": "hello", "pid": -1}', "outside"), ("[1, 2]", "expected a JSON object"),
    ("[" * 10000, "nested deeper"), ('{"op": "hello", "pid": ' + "7" * 5000 + "}", "5000 digits"),
])
def test_a_minivmm_hello_without_a_pid(hello, problem):
    message = refused(lambda: Vmm(guest({}, [hello])), "minivmm", error=GuestError)
    assert problem in message


def vmm(*answers: str) -> Vmm:
    return Vmm(guest({}, ['{"op": "hello", "pid": 77}', *answers]))


@pytest.mark.parametrize("answer", ["Segmentation fault", '"x"', "3", "[" * 10000, '{"op": "get", "ret": NaN}'])
def test_minivmm_answers_that_are_not_objects(answer):
    message = refused(lambda: vmm(answer).call("get", slot=1), "minivmm", error=VmmError)
    assert "answered 'get' with bad data" in message


def test_minivmm_answers_without_the_fields_read():
    v = vmm('{"op": "read", "ret": 0, "errno": 0, "values": [1, "2"]}',
            '{"op": "read", "ret": 0, "errno": 0}',
            '{"op": "stats", "ret": 0, "errno": 0, "stats": {"pages_2m": "x"}}',
            '{"op": "stats", "ret": 0, "errno": 0, "stats": [1]}')
    refused(lambda: read_check(v, [0, 1], [1, 2], "now"), "minivmm read")
    refused(lambda: read_check(v, [0, 1], [1, 2], "now"), "minivmm read")
    refused(lambda: _stats(v), "minivmm stats")
    refused(lambda: _stats(v), "minivmm stats")
    refused(lambda: slot_of({"op": "create", "pages": 8}), "minivmm create")
    refused(lambda: slot_of({"op": "create", "hva": 2**46, "pages": 2**40}), "minivmm create")
    refused(lambda: _failed({"op": "madvise", "ret": -1}), "minivmm madvise")
    refused(lambda: _failed({"op": "madvise", "ret": -1, "errno": 99999}), "minivmm madvise")


@pytest.mark.parametrize("op,answer", [
    ("create", {"op": "create", "ret": 0, "errno": 0}), ("create", {"op": "create", "ret": "0", "errno": 0}),
    ("read", {"op": "read", "ret": 0, "errno": 0, "values": [-1]}),
    ("get", {"op": "get", "ret": 0, "errno": 0, "bitmap": "xyz"}), ("get", {"op": "get", "ret": 0, "errno": 0}),
    ("cap", {"op": "cap", "ret": -1}),
])
def test_dirty_log_answers_without_the_fields_read(op, answer):
    refused(lambda: Answer.parse(op, answer), f"minivmm {op}")


def test_dirty_log_exploration_stops_at_a_bad_answer_instead_of_shrinking_it():
    v = vmm('{"op": "create", "ret": 0, "errno": 0, "pid": 77}')
    refused(lambda: explore(v, 1, examples=5, steps=5), "minivmm create", seconds=10.0)


@pytest.mark.parametrize("out", ["Segmentation fault\n", START + "\n" + '{"op": "ksmd", "pid": 77}\n',
                                 START + "\n" + '{"op": "ksmd", "pid": 77, "t0": -1}\n', "[" * 10000 + "\n"])
def test_mmops_ksmd_for_the_vmm_with_garbage(out):
    refused(lambda: KvmKsm._merge(guest({"/opt/nh/bin/mmops": out}), 77, 1.0), "mmops ksmd")


# --- ftrace ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("out", ["event\n", "\n", "garbage\n", "event kvm_unmap_hva_range extra\n",
                                 "event not_a_kvm_event\n", "kprobe\n", "\x00\x01\n"])
def test_ftrace_set_up_output_with_garbage(out):
    refused(lambda: KvmTrace(guest({"sh -c set -e; cd /sys/kernel/tracing": out})).start(), "ftrace set-up")


TRACE_LINE = "         minivmm-77     [001] d..1.   10.000000: kvm_unmap_hva_range: " \
             "mmu notifier unmap range: 0x7f0000000000 -- 0x7f0000001000"


@pytest.mark.parametrize("out,source", [
    ("overrun: x\n" + STATS_END + "\n", "per_cpu/cpu*/stats"),
    ("overrun: \n" + STATS_END + "\n", "per_cpu/cpu*/stats"),
    ("\n\n" + STATS_END + "\n", "per_cpu/cpu*/stats"),
    ("overrun: " + "9" * 5000 + "\n" + STATS_END + "\n", "per_cpu/cpu*/stats"),
    ("overrun: 0\n", "ftrace"),
    ("overrun: 0\n" + STATS_END + "\n# tracer: nop\n\ngarbage line\n", "/sys/kernel/tracing/trace"),
    ("overrun: 0\n" + STATS_END + "\n" + TRACE_LINE.replace("-77", "-" + "7" * 5000) + "\n",
     "/sys/kernel/tracing/trace"),
    ("overrun: 0\n" + STATS_END + "\n" + TRACE_LINE.replace("0x7f0000001000", "0x" + "f" * 5000) + "\n",
     "/sys/kernel/tracing/trace"),
    ("overrun: 0\n" + STATS_END + "\n" + "x-1 " * 50000 + "\n", "/sys/kernel/tracing/trace"),
])
def test_ftrace_stats_and_trace_with_garbage(out, source):
    refused(lambda: KvmTrace(guest({"sh -c cd /sys/kernel/tracing": out})).stop(), source)


def test_ftrace_blank_lines_and_lost_event_notes_are_not_events():
    out = "overrun: 0\noverrun: 2\n" + STATS_END + "\n# tracer: nop\n\nCPU:1 [LOST 2 EVENTS]\n" + TRACE_LINE + "\n"
    trace = KvmTrace(guest({"sh -c cd /sys/kernel/tracing": out}))
    assert [e.name for e in trace.stop()] == ["kvm_unmap_hva_range"] and trace.overruns == 2


# --- bench ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("out", ["garbage\n", START + "\n" + EXIT + "\n", START + '\n{"op": "loop", "t0": 5}\n',
                                 START + '\n{"op": "loop", "t0": 5, "t1": 4}\n'])
def test_bench_loop_with_garbage(out):
    from harness.bench import _loop_ns
    refused(lambda: _loop_ns(guest({"/opt/nh/bin/mmops": out}), ["/opt/nh/bin/mmops", "loop:1"]), "bench: mmops")
