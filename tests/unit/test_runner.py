"""The runner on fake machines: a broken kernel or broken guest output costs its own row and no more;
the kernel's report leads; an unreliable kernel is rebooted; results stay sanitized."""

from __future__ import annotations

import json
import re

import pytest

from harness.config import Config, MachineConfig, ScenarioConfig
from harness.kernelspec import parse_kernel_spec
from harness.runner import Run
from harness.verdict import Verdict, exit_code
from tests.unit.fake_machine import OOPS, FakeMachine, Scripted, fake_prepare, healthy

PASS = Verdict("pass")


def passing(ctx):
    ctx.guest.check(["true"])
    return PASS


def oopsing(ctx):
    ctx.host_fault("console:" + OOPS)
    return Verdict("error", ("minivmm exited (status -1) instead of answering 'destroy'",))


def harness_bug(ctx):
    return {}["no such key"]


@pytest.fixture
def scenarios(monkeypatch):
    table = {"ok": Scripted("ok", passing), "oops": Scripted("oops", oopsing), "bug": Scripted("bug", harness_bug)}
    monkeypatch.setattr("harness.runner.SCENARIOS", table)
    FakeMachine.boots = []
    return table


def run(tmp_path, monkeypatch, names, answer=healthy, kernels=("debian:6.1", "debian:6.12")):
    monkeypatch.setattr("harness.runner.cache_root", lambda: tmp_path / "cache")
    monkeypatch.setattr(FakeMachine, "answer", staticmethod(answer))
    config = Config(kernels=tuple(parse_kernel_spec(k) for k in kernels), machine=MachineConfig(accel="tcg"),
                    scenarios=tuple(ScenarioConfig(n, timeout_s=30) for n in names))
    r = Run(config=config, out_dir=tmp_path / "run", log=lambda line: None, prepare_kernel=fake_prepare,
            machine_factory=FakeMachine)
    results = r.execute()
    return results, json.loads((tmp_path / "run" / "results.json").read_text())


def test_garbage_taint_is_an_error_row_and_everything_else_still_runs(tmp_path, monkeypatch, scenarios):
    def answer(command):
        if "begin bug" in command:
            return 0, b"\x00garbage\n"
        return healthy(command)
    scenarios["bug"] = Scripted("bug", passing)
    results, doc = run(tmp_path, monkeypatch, ["ok", "bug", "ok"], answer)
    assert [(r.scenario, r.verdict) for r in results] == [("ok", "pass"), ("bug", "error"), ("ok", "pass")] * 2
    finding = results[1].findings[0]
    assert "/proc/sys/kernel/tainted" in finding and "\\x00garbage" in finding
    assert exit_code(results) == 2          # an error, not a test failure
    assert len(doc["results"]) == 6


def test_a_harness_bug_is_an_error_row_with_its_traceback(tmp_path, monkeypatch, scenarios):
    results, _ = run(tmp_path, monkeypatch, ["bug", "ok"], kernels=("debian:6.1",))
    assert [(r.scenario, r.verdict) for r in results] == [("bug", "error"), ("ok", "pass")]
    assert results[0].findings[0].startswith("harness bug: KeyError: ")
    assert "Traceback" in (tmp_path / "run" / results[0].artifacts / "traceback.txt").read_text()


def test_an_oops_fails_its_row_first_and_costs_one_reboot(tmp_path, monkeypatch, scenarios):
    results, doc = run(tmp_path, monkeypatch, ["oops", "ok", "ok"], kernels=("debian:6.1",))
    assert [(r.scenario, r.verdict) for r in results] == [("oops", "fail"), ("ok", "pass"), ("ok", "pass")]
    oops = results[0]
    assert oops.findings == ("kernel oops: BUG: kernel NULL pointer dereference in nh_debug_oops",
                             "minivmm exited (status -1) instead of answering 'destroy'")
    assert any("the guest is rebooted before the next one" in n for n in oops.notes)
    assert doc["run"]["kernels"][0]["boots"] == 2 and len(FakeMachine.boots) == 2
    assert FakeMachine.boots[0].shutdown_how == "quit"


def test_an_oops_in_the_last_scenario_keeps_the_guest_for_repro_shell(tmp_path, monkeypatch, scenarios):
    results, doc = run(tmp_path, monkeypatch, ["ok", "oops"], kernels=("debian:6.1",))
    assert [r.verdict for r in results] == ["pass", "fail"]
    assert doc["run"]["kernels"][0]["boots"] == 1


def test_control_characters_from_the_guest_never_reach_the_results(tmp_path, monkeypatch, scenarios):
    def escaping(ctx):
        return Verdict("fail", ("workload said \x1b]52;c;ZXZpbA==\x07 and \x00",), ("note \x1b[2J",))
    scenarios["esc"] = Scripted("esc", escaping)
    results, doc = run(tmp_path, monkeypatch, ["esc"], kernels=("debian:6.1",))
    row = doc["results"][0]
    assert row["findings"] == ["workload said \\x1b]52;c;ZXZpbA==\\x07 and \\x00"]
    assert row["notes"] == ["note \\x1b[2J"]


def test_a_run_keeps_its_debug_log(tmp_path, monkeypatch, scenarios):
    run(tmp_path, monkeypatch, ["ok"], kernels=("debian:6.1",))
    text = (tmp_path / "run" / "harness.log").read_text()
    assert "scenario ok (ok) on 6.1.0-99-cloud-amd64: begin" in text and "scenario ok: pass" in text


def test_debug_lines_quoting_the_guest_are_escaped(tmp_path):
    import logging
    from harness.debuglog import kept_in
    with kept_in(tmp_path / "harness.log"):
        logging.getLogger("harness.vm.ssh").debug("guest said %s", "\x1b]52;c;x\x07")
    assert (tmp_path / "harness.log").read_text().endswith("guest said \\x1b]52;c;x\\x07\n")


def test_what_the_guests_tools_noted_goes_into_that_scenarios_row_only(tmp_path, monkeypatch, scenarios):
    def noting(ctx):
        ctx.guest.notes.append("nhctl waited 7 us")
        return PASS
    scenarios["noting"] = Scripted("noting", noting)
    results, _ = run(tmp_path, monkeypatch, ["noting", "ok"], kernels=("debian:6.1",))
    assert [r.verdict for r in results] == ["pass", "pass"]
    assert "nhctl waited 7 us" in results[0].notes and not any("nhctl" in n for n in results[1].notes)


def test_host_side_work_counts_against_the_scenarios_time_limit(tmp_path, monkeypatch, scenarios):
    import time

    def slow_model(ctx):
        time.sleep(0.5)          # the guest answered long ago; the host is still judging
        return PASS
    scenarios["slow"] = Scripted("slow", slow_model)
    monkeypatch.setattr("harness.runner.HANG_PROBE_S", 0.0)
    monkeypatch.setattr(FakeMachine, "answer", staticmethod(healthy))
    monkeypatch.setattr("harness.runner.cache_root", lambda: tmp_path / "cache")
    config = Config(kernels=(parse_kernel_spec("debian:6.1"),), machine=MachineConfig(accel="tcg"),
                    scenarios=(ScenarioConfig("slow", timeout_s=0.2), ScenarioConfig("ok", timeout_s=30)))
    results = Run(config=config, out_dir=tmp_path / "run", log=lambda line: None, prepare_kernel=fake_prepare,
                  machine_factory=FakeMachine).execute()
    assert [r.verdict for r in results] == ["error", "pass"]
    assert results[0].findings[0].startswith("scenario time limit of 0 s exceeded")


def test_a_scenario_the_kernels_configuration_rules_out_is_skipped_with_the_option(tmp_path, monkeypatch,
                                                                                  scenarios):
    def answer(command):
        if "/proc/config.gz" in command:
            return 0, b"CONFIG_MODULES=y\n# CONFIG_KSM is not set\n"
        return healthy(command)
    touched = []
    scenarios["needs-ksm"] = Scripted("needs-ksm", lambda ctx: touched.append(1) or PASS, needs=("CONFIG_KSM",))
    scenarios["needs-kvm"] = Scripted("needs-kvm", passing, needs=("CONFIG_KVM_AMD|CONFIG_MODULES",))
    results, doc = run(tmp_path, monkeypatch, ["needs-ksm", "needs-kvm"], answer, kernels=("debian:6.1",))
    assert [(r.scenario, r.verdict, r.findings) for r in results] == [
        ("needs-ksm", "skip", ("CONFIG_KSM is not set",)), ("needs-kvm", "pass", ())]
    assert not touched and doc["run"]["kernels"][0]["kernel_config"] == "/proc/config.gz"
    assert exit_code(results) == 0


def test_without_a_known_configuration_every_scenario_runs(tmp_path, monkeypatch, scenarios):
    scenarios["needs-ksm"] = Scripted("needs-ksm", passing, needs=("CONFIG_KSM",))
    results, doc = run(tmp_path, monkeypatch, ["needs-ksm"], kernels=("debian:6.1",))
    assert [r.verdict for r in results] == ["pass"]
    assert doc["run"]["kernels"][0]["kernel_config"].startswith("unknown")


def test_a_kernel_outside_the_verified_set_names_what_was_extrapolated(tmp_path, monkeypatch, scenarios):
    results, _ = run(tmp_path, monkeypatch, ["ok"], kernels=("tree:/src/linux-6.6", "debian:6.12"))
    unverified, verified = (" ".join(r.notes) for r in results)
    assert "kernel 6.6 is outside the versions the model was read from (6.1, 6.12)" in unverified
    assert "arch_invalidate_secondary_tlbs instead of invalidate_range: assumed (from 6.6" in unverified
    assert "no change_pte (and no kvm_set_spte_hva): not assumed (from 6.10" in unverified
    assert "outside the versions" not in verified


def _normalised(doc: dict) -> dict:
    """A results document without what differs between two runs of the same thing (times, paths)."""
    doc = json.loads(json.dumps(doc))
    doc["run"].pop("started"), doc["run"].pop("out_dir")
    for row in doc["results"]:
        row.pop("duration_s")
    for kernel in doc["run"]["kernels"]:
        kernel.pop("boot_s", None), kernel.pop("qemu_argv", None), kernel.pop("console_log", None)
    return doc


def test_kernels_in_parallel_give_the_same_results_in_the_same_order(tmp_path, monkeypatch, scenarios):
    import time

    def slow(ctx):
        time.sleep(0.05)
        return PASS
    scenarios["slow"] = Scripted("slow", slow)
    names = ["ok", "oops", "slow", "bug", "ok"]
    docs, junits = [], []
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        monkeypatch.setattr("harness.runner.cache_root", lambda: tmp_path / "cache")
        config = Config(kernels=(parse_kernel_spec("debian:6.1"), parse_kernel_spec("debian:6.12")),
                        machine=MachineConfig(accel="tcg"),
                        scenarios=tuple(ScenarioConfig(n, timeout_s=30) for n in names))
        Run(config=config, out_dir=out, log=lambda line: None, prepare_kernel=fake_prepare,
            machine_factory=FakeMachine, jobs=jobs).execute()
        docs.append(_normalised(json.loads((out / "results.json").read_text())))
        junits.append(re.sub(r'time="[0-9.]+"', "", (out / "junit.xml").read_text()))
    assert docs[0] == docs[1] and junits[0] == junits[1]
    assert [(r["kernel"][:4], r["scenario"]) for r in docs[1]["results"]][:3] == [("6.1.", "ok"), ("6.1.", "oops"),
                                                                                   ("6.1.", "slow")]
    assert [k["boots"] for k in docs[1]["run"]["kernels"]] == [2, 2]
