"""Memslot changes under the oracle on 6.1 and 6.12 under TCG (nested SVM): the `memslot` scenario
passes on both, and its self-test, a VMM that skips one slot deletion, fails with a shrunk sequence
that names the deleted slot."""

from __future__ import annotations

import json

from harness.cli import main
from tests.guest.conftest import run_matrix_passing


def test_memslot_passes_on_6_1_and_6_12(kernels, tmp_path, capsys):
    notes = run_matrix_passing(tmp_path / "run", capsys, "memslot")
    for version in ("1", "12"):
        row = notes[(version, "memslot")]
        assert "operations/s" in row
        # Every kind of change happened and was refused as it should be, and the L2 both reached memory
        # and exited: a run that never moved a slot or never saw an MMIO exit would prove little.
        for outcome in ("create", "delete", "move", "flags", "EINVAL", "EEXIST"):
            assert f"{outcome} " in row, (outcome, row)
        assert "pf_mmio_spte_created 0" not in row and "mmio_exits 0" not in row


def test_a_vmm_that_skips_one_delete_fails_memslot_with_a_shrunk_sequence(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "-c", "configs/matrix.yaml", "--kernel", "debian:6.12", "--accel", "tcg",
                 "--scenario", "memslot-skip-delete", "--out", str(out)])
    capsys.readouterr()
    rows = {r["scenario"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert code == 1
    assert rows["memslot-skip-delete"]["verdict"] == "fail"
    finding = rows["memslot-skip-delete"]["findings"][0]
    assert "minimal sequence" in finding and "seed 1" in finding and "was deleted" in finding
    artifacts = out / rows["memslot-skip-delete"]["artifacts"]
    requests = [json.loads(r) for r in json.loads((artifacts / "exploration.json").read_text())["minimal_requests"]]
    # Shrunk: create, a slot, its deletion (skipped), what shows the slot is still there, teardown.
    assert len(requests) <= 8, requests
    assert requests[0]["op"] == "create"
    assert any(r["op"] == "region" and r["size"] == 0 for r in requests)
    assert (artifacts / "minimal-sequence.txt").exists() and (artifacts / "requests.log").exists()
