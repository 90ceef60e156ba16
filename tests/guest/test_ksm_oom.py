"""KSM, aging and memcg OOM on real kernels: the scenarios pass on 6.1 and 6.12, and
an OOM that never comes or a ksmd too slow is a clear error, after which the
next scenario still starts clean."""

from __future__ import annotations

import json

from harness.cli import main
from tests.guest.conftest import run_matrix_passing


def test_ksm_aging_and_oom_scenarios_pass_on_6_1_and_6_12(kernels, tmp_path, capsys):
    notes = run_matrix_passing(tmp_path / "run", capsys, "ksm", "aging", "memcg-oom", "memcg-oom-nonblock-fail")
    assert "ksm_merging_pages 64 of 64" in notes[("1", "ksm")]
    # The aging callback reclaim uses differs by version: MGLRU (on by default on 6.12) look-around.
    assert "lru_gen/enabled 0x0000" in notes[("1", "aging")] and " 0 clear_young" in notes[("1", "aging")]
    assert " 0 clear_flush_young" in notes[("12", "aging")] and "AnonHugePages 2048 kB" in notes[("12", "aging")]
    assert "'oom_kill': 1" in notes[("12", "memcg-oom")] and "1 reaping attempt(s)" in notes[("12", "memcg-oom")]
    assert "10 reaping attempt(s)" in notes[("1", "memcg-oom-nonblock-fail")]


def test_no_oom_and_slow_ksmd_are_errors_and_the_next_scenario_runs(kernels, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("""
kernels: [debian:6.1]
machine: {accel: tcg, memory: 1G}
scenarios:
  - {name: memcg-oom, memcg_max: 64M, alloc: 8M, reaper_wait: 1}
  - {name: ksm, ksm_timeout: 0.5}
  - {name: aging, khugepaged_timeout: 0.01}
  - smoke
""")
    out = tmp_path / "run"
    code = main(["run", "-c", str(config), "--out", str(out)])
    capsys.readouterr()
    rows = {r["scenario"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert code == 2
    assert rows["memcg-oom"]["verdict"] == "error"
    assert "survived: the whole allocation fit under the limit" in rows["memcg-oom"]["findings"][0]
    assert rows["ksm"]["verdict"] == "error"
    assert "ksmd did not complete two full scans in time" in rows["ksm"]["findings"][0]
    assert '"full_scans"' in rows["ksm"]["findings"][0]
    assert rows["aging"]["verdict"] == "error"
    assert "khugepaged did not complete two full scans in time" in rows["aging"]["findings"][0]
    assert rows["smoke"]["verdict"] == "pass"
