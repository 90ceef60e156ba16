"""Halt polling under the oracle on 6.1 and 6.12 under TCG (nested SVM): the `halt-poll` scenario
passes on both, and its self-test, the model told halt_poll_ns_grow 3 where the kernel has 2, fails
with the finding that names the parameter."""

from __future__ import annotations

import json
from collections import Counter

from harness.cli import main
from tests.guest.conftest import run_matrix_passing


def test_halt_poll_passes_on_6_1_and_6_12(kernels, tmp_path, capsys):
    notes = run_matrix_passing(tmp_path / "run", capsys, "halt-poll")
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    for row in rows:
        phases = json.loads((tmp_path / "run" / row["artifacts"] / "phases.json").read_text())
        seen: Counter[str] = sum((Counter(p["seen"]) for p in phases), Counter())
        # The window grew, shrank, was clamped and reset, and the VM's own maximum outgrew the
        # module's: a run that never reached one of them would prove little.
        for kind in ("grow", "shrink", "shrink-to-0", "grow-unchanged", "grow-past-max", "entry-clamp", "reset",
                     "long-at-0", "over-module-max", "poll-success", "poll-fail", "unpolled"):
            assert seen[kind] > 0, (row["kernel"], kind, dict(seen))
    # The one default that differs between the versions, read from the module before the scenario.
    assert "halt_poll_ns_shrink 0" in notes[("1", "halt-poll")].split(" grow-shrink")[0]
    assert "halt_poll_ns_shrink 2" in notes[("12", "halt-poll")].split(" grow-shrink")[0]


def test_a_misreported_grow_fails_naming_it(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "-c", "configs/matrix.yaml", "--accel", "tcg", "--scenario", "halt-poll-misreport",
                 "--out", str(out)])
    capsys.readouterr()
    rows = json.loads((out / "results.json").read_text())["results"]
    assert code == 1 and len(rows) == 2
    for row in rows:
        assert row["verdict"] == "fail", row
        finding = row["findings"][0]
        assert finding.startswith("[hp-grow]") and "halt_poll_ns_grow 3" in finding, finding
