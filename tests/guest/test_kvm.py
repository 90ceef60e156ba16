"""KVM inside the kernel under test: dirty logging against the model and KVM's notifier against
the probe, on 6.1 and 6.12 under TCG (nested SVM); and the oracle's self-test: a VMM that skips
one clear makes dirty-log fail with a shrunk sequence."""

from __future__ import annotations

import json

from harness.cli import main
from tests.guest.conftest import run_matrix_passing


def test_kvm_scenarios_pass_on_6_1_and_6_12(kernels, tmp_path, capsys):
    notes = run_matrix_passing(tmp_path / "run", capsys, "dirty-log", "kvm-thp-split", "kvm-ksm", "kvm-oom")
    for version in ("1", "12"):
        assert "operations/s" in notes[(version, "dirty-log")]
        assert "after the split: pages_2m 0" in notes[(version, "kvm-thp-split")]
        assert "ksm_merging_pages 64 of 64" in notes[(version, "kvm-ksm")]
        assert "'oom_kill': 1" in notes[(version, "kvm-oom")]
        # Seen, by whichever task dropped the VMM's mm last (on 6.12 sometimes the VM's
        # kvm-nx-lpage-recovery worker, not minivmm's main thread).
        assert "KVM release by -," not in notes[(version, "kvm-oom")]
        assert "VM destroyed by -" not in notes[(version, "kvm-oom")]
    # change_pte, and with it kvm_set_spte_hva, exists on 6.1 only: ksmd's merges show it.
    assert "'set_spte': 128" in notes[("1", "kvm-ksm")] and "set_spte" not in notes[("12", "kvm-ksm")]


def test_a_vmm_that_skips_one_clear_fails_dirty_log_with_a_shrunk_sequence(kernels, tmp_path, capsys):
    config = tmp_path / "corrupt.yaml"
    config.write_text("""
kernels: [debian:6.12]
machine: {accel: tcg}
scenarios:
  - {name: dirty-log, vmm_corrupt: skip-clear, timeout: 400}
  - smoke
seed: 1
""")
    out = tmp_path / "run"
    code = main(["run", "-c", str(config), "--out", str(out)])
    capsys.readouterr()
    rows = {r["scenario"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert code == 1
    assert rows["dirty-log"]["verdict"] == "fail" and rows["smoke"]["verdict"] == "pass"
    finding = rows["dirty-log"]["findings"][0]
    assert "minimal sequence" in finding and "seed 1" in finding
    exploration = json.loads((out / rows["dirty-log"]["artifacts"] / "exploration.json").read_text())
    requests = [json.loads(r) for r in exploration["minimal_requests"]]
    # Shrunk: create, a write, a clear that asked for the page, a look at the log, and teardown.
    assert len(requests) <= 8, requests
    assert [r["op"] for r in requests][0] == "create" and "clear" in [r["op"] for r in requests]
