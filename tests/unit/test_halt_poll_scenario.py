"""The halt-poll scenario without a guest: KVM's trace lines, minivmm's answers and the module's
parameters are parsed at the guest-data boundary (hostile text is an error naming its source), and
the whole plan runs against a stand-in kernel that halts as kvm_vcpu_halt does, faithfully or with
one thing wrong."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import pytest

from harness.config import ScenarioConfig
from harness.guest import Guest
from harness.guest_data import GuestDataError
from harness import tracefs
from harness.kvm import halt_trace
from harness.kvm.halt_trace import COLLECT_SCRIPT, INSTANCE, SETUP_SCRIPT, STATS_END, TEARDOWN_SCRIPT, parse_halt_trace
from harness.model.halt_poll import Params, PollChange, Wakeup, bucket
from harness.model.versions import features_for
from harness.scenarios import SCENARIOS, SELF_TESTS
from harness.scenarios import halt_poll as scenario
from harness.scenarios.base import KVM_NEEDS, TRACE_NEEDS, ScenarioContext
from harness.scenarios.halt_poll import (PARAMETERS, LONG, HaltPoll, HaltPollMisreport, _params, defaults_problem,
                                         parse_halt_answer, parse_vcpu_stats)
from harness.vm.ssh import CommandResult, SshSession, quote_argv

WAKE = "         minivmm-190     [000] .....     3.570219: kvm_vcpu_wakeup: wait time 459278 ns, polling valid"
GROW = "         minivmm-190     [000] .....     3.569914: kvm_halt_poll_ns: vcpu 0: halt_poll_ns 10000 (grow 0)"


# --- KVM's trace lines ----------------------------------------------------------------

def test_the_two_events_parse():
    events = parse_halt_trace("# tracer: nop\n#\n" + GROW + "\n" + WAKE.replace("wait", "poll") + "\n\n", first_line=7)
    assert [e.pid for e in events] == [190, 190]
    assert events[0].item == PollChange(vcpu=0, new=10000, old=0, grow=True, line=7)
    assert events[1].item == Wakeup(ns=459278, waited=False, valid=True, line=8)
    shrink = parse_halt_trace(GROW.replace("(grow 0)", "(shrink 20000)"))[0].item
    assert isinstance(shrink, PollChange) and not shrink.grow and shrink.old == 20000
    invalid = parse_halt_trace(WAKE.replace("polling valid", "polling invalid"))[0].item
    assert isinstance(invalid, Wakeup) and not invalid.valid and invalid.waited


@pytest.mark.parametrize("line,problem", [
    (WAKE.replace("kvm_vcpu_wakeup", "kvm_exit"), "not a kvm_halt_poll_ns or kvm_vcpu_wakeup event"),
    (WAKE.replace("wait time", "nap time"), "not what kvm_vcpu_wakeup prints"),
    (WAKE.replace("459278", "-5"), "outside"),
    (WAKE.replace("459278", "9" * 21), "not what kvm_vcpu_wakeup prints"),
    (WAKE.replace("459278", "99999999999999999999"), "outside"),
    (GROW.replace("10000", "4294967296"), "outside"),
    (GROW.replace("vcpu 0:", "vcpu x:"), "not what kvm_halt_poll_ns prints"),
    (GROW.replace("(grow 0)", "(bloat 0)"), "not what kvm_halt_poll_ns prints"),
    (GROW + " trailing", "not what kvm_halt_poll_ns prints"),
    ("CPU:0 [LOST 12 EVENTS]", "lost events"),
    (WAKE + " " * 600, "longer than"),
    ("\x00\x01\xff garbage", "not a kvm_halt_poll_ns"),
    ("minivmm-99999999 [000] 1.0: kvm_vcpu_wakeup: wait time 1 ns, polling valid", "not a kvm_halt_poll_ns"),
])
def test_hostile_trace_lines_name_the_source(line, problem):
    with pytest.raises(GuestDataError, match="nh-halt/trace") as e:
        parse_halt_trace(GROW + "\n" + line + "\n", "/sys/kernel/tracing/instances/nh-halt/trace")
    assert problem in str(e.value)


def test_a_collection_needs_its_marker_and_overrun_lines():
    def split_collection(out: str) -> tuple[int, str]:
        return tracefs.split_collection(out, INSTANCE, STATS_END, "c")

    assert split_collection(f"overrun: 0\noverrun: 2\n{STATS_END}\n{WAKE}\n") == (2, WAKE + "\n")
    with pytest.raises(GuestDataError, match="c: no '--nh-halt--'"):
        split_collection(f"overrun: 0\n{WAKE}\n")
    with pytest.raises(GuestDataError, match="overrun"):
        split_collection(f"garbage\n{STATS_END}\n")


def test_the_scripts_touch_only_the_instance():
    for script in (SETUP_SCRIPT, COLLECT_SCRIPT, TEARDOWN_SCRIPT):
        assert "instances/nh-halt" in script and "nh-cov" not in script and "kprobe_events" not in script


# --- minivmm's answers -----------------------------------------------------------------

def halt_answer(n: int = 2, **override: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {"op": "halt", "ret": 0, "errno": 0, "tsc_khz": 2596106, "other_irqs": 0, "skipped": 0,
                              "halts": [{"ns": 200000, "tsc": 800000, "l2_ns": 308000, "irqs": 1, "hlts": 1}] * n}
    answer.update(override)
    return answer


def test_a_halt_answer_parses():
    a = parse_halt_answer(halt_answer(skipped=1), [200000, 200000])
    assert [h.l2_ns for h in a.halts] == [308000, 308000] and a.hlts_executed == 1


@pytest.mark.parametrize("answer,asked,problem", [
    (halt_answer(1), [200000, 200000], "1 halts answered for 2 asked"),
    (halt_answer(2), [200000, 100], "where 100 was asked"),
    (halt_answer(halts="no"), [1], "'halts' is not a list"),
    (halt_answer(halts=[{"ns": 1, "tsc": 1, "l2_ns": 1, "irqs": 1}]), [1], "no 'hlts'"),
    (halt_answer(halts=[{"ns": 1, "tsc": -1, "l2_ns": 1, "irqs": 1, "hlts": 1}]), [1], "outside"),
    (halt_answer(halts=[{"ns": 1, "tsc": 1, "l2_ns": 1, "irqs": True, "hlts": 1}]), [1], "'irqs' is not an integer"),
    (halt_answer(halts=[7]), [1], "expected a JSON object"),
    (halt_answer(1, skipped=2), [200000], "2 HLTs skipped of 1 tried"),
    ({k: v for k, v in halt_answer().items() if k != "other_irqs"}, [200000, 200000], "no 'other_irqs'"),
])
def test_hostile_halt_answers(answer, asked, problem):
    with pytest.raises(GuestDataError, match="minivmm halt") as e:
        parse_halt_answer(answer, asked)
    assert problem in str(e.value)


def test_vcpu_stats_with_histograms():
    stats, hists = parse_vcpu_stats({"op": "stats", "stats": {"halt_exits": 3}, "hists": {"halt_wait_hist": [0, 2]}})
    assert stats == {"halt_exits": 3} and hists == {"halt_wait_hist": [0, 2]}


@pytest.mark.parametrize("answer,problem", [
    ({"stats": {}, "hists": [1]}, "'hists' is not a dict"),
    ({"stats": {}}, "no 'hists'"),
    ({"stats": {}, "hists": {"h": [1, "2"]}}, "not an integer"),
    ({"stats": {}, "hists": {"h": [-1]}}, "outside"),
    ({"stats": {}, "hists": {"h": [0] * 65}}, "65 buckets"),
    ({"stats": {"a": 1.5}, "hists": {}}, "'a' is not an integer"),
])
def test_hostile_stats(answer, problem):
    with pytest.raises(GuestDataError, match="minivmm stats") as e:
        parse_vcpu_stats(answer)
    assert problem in str(e.value)


@pytest.mark.parametrize("text", ["1 2 3", "1 2 3 4 5", "1 2 x 4", "1 2 3 4294967296", "\x00\x01", "-1 2 3 4"])
def test_hostile_parameters(text):
    with pytest.raises(GuestDataError, match="halt_poll_ns"):
        _params(text, f"{PARAMETERS}/halt_poll_ns*")


def test_defaults_by_version():
    assert defaults_problem((6, 1), Params(200000, 2, 10000, 0), "") is None
    assert defaults_problem((6, 12), Params(200000, 2, 10000, 2), "") is None
    problem = defaults_problem((6, 12), Params(200000, 2, 10000, 0), "")
    assert problem and problem.startswith("[hp-defaults]") and "halt_poll_ns_shrink 2" in problem
    assert defaults_problem((6, 12), Params(1, 2, 3, 4), "console=ttyS0 kvm.halt_poll_ns=1") is None
    assert defaults_problem((6, 6), Params(1, 2, 3, 4), "") is None


def test_registered_with_the_kvm_and_trace_needs():
    assert isinstance(SCENARIOS["halt-poll"], HaltPoll) and isinstance(SCENARIOS["halt-poll-misreport"],
                                                                        HaltPollMisreport)
    assert "halt-poll-misreport" in SELF_TESTS and "halt-poll" not in SELF_TESTS
    assert SCENARIOS["halt-poll"].needs == (*KVM_NEEDS, *TRACE_NEEDS) and SCENARIOS["halt-poll"].knobs == frozenset()


# --- the plan against a stand-in kernel ----------------------------------------------------

U32 = (1 << 32) - 1
HISTS = ("halt_poll_success_hist", "halt_poll_fail_hist", "halt_wait_hist")


@dataclass
class Kernel:
    """The guest as the scenario sees it: the kvm module's parameters, the nh-halt instance's trace,
    and one VM whose vCPU halts as kvm_vcpu_halt does (transcribed from virt/kvm/kvm_main.c, not
    from the model).  `flaw` breaks one thing: "grow-saturates" (no 32-bit wrap), "no-vm-cap" (ignores
    KVM_CAP_HALT_POLL), "no-entry-clamp", "stats" (halt_successful_poll one short)."""

    flaw: str = ""
    seed: int = 1
    params: list[int] = field(default_factory=lambda: [200000, 2, 10000, 2])
    trace: list[str] = field(default_factory=list)
    pid: int = 321
    clock: float = 3.0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.new_vm()

    def new_vm(self) -> None:
        self.window, self.vm_cap = 0, None
        self.stats = {name: 0 for name in ("halt_attempted_poll", "halt_successful_poll", "halt_poll_invalid",
                                           "halt_wakeup", "halt_poll_success_ns", "halt_poll_fail_ns", "halt_wait_ns",
                                           "halt_exits")}
        self.hists = {name: [0] * 32 for name in HISTS}

    def line(self, text: str) -> None:
        self.clock += 0.0001
        self.trace.append(f"         minivmm-{self.pid}     [000] .....     {self.clock:.6f}: {text}")

    def max_ns(self) -> int:
        return self.params[0] if self.vm_cap is None or self.flaw == "no-vm-cap" else self.vm_cap

    def halt(self, timer_ns: int) -> dict[str, int]:
        self.stats["halt_exits"] += 1
        if self.rng.random() < 0.1:                    # the timer fired before the HLT trapped
            return {"ns": timer_ns, "tsc": 1, "l2_ns": 1, "irqs": 1, "hlts": 1}
        max_ns = self.max_ns()
        if self.window > max_ns and self.flaw != "no-entry-clamp":
            self.window = max_ns
        do_poll = self.window != 0
        halt_ns = (int(timer_ns * self.rng.uniform(1.0, 1.3)) if timer_ns >= LONG
                   else self.rng.choice((120_000, 250_000, 480_000, 3_100_000)))
        waited = not (do_poll and halt_ns <= self.window and self.rng.random() < 0.9)
        poll_ns = min(self.window, halt_ns) if do_poll else 0
        if do_poll:
            self.stats["halt_attempted_poll"] += 1
            if not waited:
                self.stats["halt_successful_poll"] += 0 if self.flaw == "stats" else 1
                self.stats["halt_poll_success_ns"] += poll_ns
                self.hists["halt_poll_success_hist"][bucket(poll_ns)] += 1
            else:
                self.stats["halt_poll_fail_ns"] += poll_ns
                self.hists["halt_poll_fail_hist"][bucket(poll_ns)] += 1
        if waited:
            self.stats["halt_wait_ns"] += halt_ns - poll_ns
            self.hists["halt_wait_hist"][bucket(halt_ns - poll_ns)] += 1
            self.stats["halt_wakeup"] += 1
        grow, grow_start, shrink = self.params[1:]
        old = self.window
        if max_ns:
            if halt_ns <= self.window:
                pass
            elif self.window and halt_ns > max_ns:
                val = self.window // shrink if shrink else 0
                self.window = 0 if val < grow_start else val
                self.line(f"kvm_halt_poll_ns: vcpu 0: halt_poll_ns {self.window} (shrink {old})")
            elif self.window < max_ns and halt_ns < max_ns:
                if grow:
                    product = self.window * grow
                    product = min(product, U32) if self.flaw == "grow-saturates" else product & U32
                    self.window = max(product, grow_start)
                self.line(f"kvm_halt_poll_ns: vcpu 0: halt_poll_ns {self.window} (grow {old})")
        else:
            self.window = 0
        self.line(f"kvm_vcpu_wakeup: {'wait' if waited else 'poll'} time {halt_ns} ns, polling valid")
        return {"ns": timer_ns, "tsc": halt_ns * 2, "l2_ns": halt_ns, "irqs": 1, "hlts": 1}

    # What the scenario runs over SSH.
    def command(self, command: str) -> tuple[int, str]:
        if command.startswith(f"sh -c 'cd {PARAMETERS} && "):
            for name, value in zip(scenario.PARAM_FILES, [w for w in command.split() if w.isdigit()][:4]):
                self.params[scenario.PARAM_FILES.index(name)] = int(value)
            return 0, "\n".join(map(str, self.params)) + "\n"
        if "cat /proc/cmdline" in command:
            return 0, "console=ttyS0\n"
        if "tracing_on" in command and "cat" in command:     # COLLECT_SCRIPT
            out = f"overrun: 0\n{STATS_END}\n# tracer: nop\n" + "".join(t + "\n" for t in self.trace)
            self.trace = []
            return 0, out
        return 0, ""


class KernelSsh(SshSession):
    def __init__(self, kernel: Kernel):
        self.kernel, self.port, self.commands = kernel, 0, []

    def run(self, argv: Union[str, Sequence[str]], timeout: float = 60.0, stdin: Optional[bytes] = None,
            watch: Optional[Callable[[], None]] = None) -> CommandResult:
        command = quote_argv(argv)
        self.commands.append(command)
        status, out = self.kernel.command(command)
        return CommandResult(argv=command, exit_status=status, stdout_bytes=out.encode(), stderr="", duration_s=0.0)

    def close(self) -> None:
        pass


@dataclass
class StandInVmm:
    kernel: Kernel
    pid: int = 321
    requests: list[dict[str, Any]] = field(default_factory=list)

    def call(self, op: str, timeout: Optional[float] = None, **args: Any) -> dict[str, Any]:
        self.requests.append({"op": op, **args})
        k = self.kernel
        answer: dict[str, Any] = {"op": op, "ret": 0, "errno": 0}
        if op == "create":
            k.new_vm()
        elif op == "cap":
            if args.get("flags", 0) or args["value"] > U32:
                answer.update(ret=-1, errno=22)
            else:
                k.vm_cap = args["value"]
        elif op == "halt":
            answer.update(halts=[k.halt(ns) for ns in args["ns"]], other_irqs=0, skipped=0, tsc_khz=2000000)
        elif op == "stats":
            answer.update(stats=dict(k.stats), hists={name: list(v) for name, v in k.hists.items()})
        return answer

    def __enter__(self) -> "StandInVmm":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def run_scenario(s: HaltPoll, kernel: Kernel, tmp_path, monkeypatch) -> Any:
    vmm = StandInVmm(kernel)
    monkeypatch.setattr(scenario, "Vmm", lambda guest, transcript=None: vmm)
    guest = Guest(ssh=KernelSsh(kernel), release="6.12.117+deb12-cloud-amd64", accel="tcg")
    ctx = ScenarioContext(guest=guest, features=features_for((6, 12)), config=ScenarioConfig(s.name), seed=1,
                          out_dir=tmp_path, console_tail=lambda: "")
    return s.run_with_kvm(ctx), vmm, guest


def test_a_faithful_kernel_passes_and_gets_its_parameters_back(tmp_path, monkeypatch):
    kernel = Kernel()
    verdict, vmm, guest = run_scenario(HaltPoll(), kernel, tmp_path, monkeypatch)
    assert verdict.status == "pass", verdict.findings
    assert kernel.params == [200000, 2, 10000, 2]                        # restored
    assert [r for r in vmm.requests if r["op"] == "create"] and all(r.get("irqchip") == 1 for r in vmm.requests
                                                                     if r["op"] == "create")
    assert any(r["op"] == "cap" and r["value"] == 1 << 32 for r in vmm.requests)
    assert "grow-shrink" in verdict.notes[1] and (tmp_path / "halt-trace.txt").exists()
    phases = json.loads((tmp_path / "phases.json").read_text())
    assert {p["phase"] for p in phases} == {s.name for s in scenario.PLAN}
    assert any(c.startswith("sh -c ") and "nh-halt" in c for c in guest.ssh.commands)   # type: ignore[attr-defined]


def test_the_misreported_grow_is_caught_by_name(tmp_path, monkeypatch):
    verdict, _, _ = run_scenario(HaltPollMisreport(), Kernel(), tmp_path, monkeypatch)
    assert verdict.status == "fail"
    assert verdict.findings[0].startswith("[hp-grow]") and "halt_poll_ns_grow 3" in verdict.findings[0]
    assert "the model is told halt_poll_ns_grow 3 where the kernel has 2" in verdict.notes[0]


@pytest.mark.parametrize("flaw,rule,phase", [
    ("grow-saturates", "[hp-grow]", "grow-wraps"),
    ("no-vm-cap", "[hp-", "vm-cap"),
    ("no-entry-clamp", "[hp-old]", ""),
    ("stats", "[hp-stats]", ""),
])
def test_a_flawed_kernel_fails(flaw, rule, phase, tmp_path, monkeypatch):
    verdict, _, _ = run_scenario(HaltPoll(), Kernel(flaw=flaw), tmp_path, monkeypatch)
    assert verdict.status == "fail"
    assert any(f.startswith(rule) and phase in f for f in verdict.findings), verdict.findings


def test_halts_that_never_block_are_an_exercise_finding(tmp_path, monkeypatch):
    kernel = Kernel()
    kernel.halt = lambda timer_ns: {"ns": timer_ns, "tsc": 1, "l2_ns": 1, "irqs": 1, "hlts": 1}  # type: ignore
    verdict, vmm, _ = run_scenario(HaltPoll(), kernel, tmp_path, monkeypatch)
    assert verdict.status == "fail" and all(f.startswith("[hp-exercise]") or f.startswith("[hp-stats]")
                                            for f in verdict.findings)
    assert "in 3 rounds" in verdict.findings[0]
    assert sum(1 for r in vmm.requests if r["op"] == "halt") == 3 * len(scenario.PLAN)


def test_another_vm_halting_is_an_error(tmp_path, monkeypatch):
    kernel = Kernel()
    kernel.trace.append("         qemu-9     [001] .....     1.0: kvm_vcpu_wakeup: wait time 5 ns, polling valid")
    with pytest.raises(Exception, match="another VM halted"):
        run_scenario(HaltPoll(), kernel, tmp_path, monkeypatch)
    assert kernel.params == [200000, 2, 10000, 2]                        # restored all the same


def test_trace_module_is_the_instance():
    assert halt_trace.INSTANCE.endswith("/instances/nh-halt")
