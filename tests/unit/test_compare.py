"""compare and the run-directory reader, on two result sets recorded from real runs on 6.1
(tests/data/runs: `baseline` with the fault scenario injecting nothing, `patched` with a WARN)."""

import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.compare import compare, normalise
from harness.rundir import RunDirError, load_run

RUNS = Path(__file__).resolve().parent.parent / "data" / "runs"


def test_a_new_warning_is_a_regression(capsys):
    c = compare(load_run(RUNS / "baseline"), load_run(RUNS / "patched"))
    [change] = c.changes
    assert (change.scenario, change.verdict_a, change.verdict_b) == ("fault", "pass", "fail")
    assert change.new == ("kernel taint: W set during the scenario (tainted 0 -> 12800)",
                          "kernel warning: WARNING in nh_ioctl") and change.vanished == ()
    assert c.regressed and c.unchanged == 2 and not c.only_a and not c.only_b
    assert main(["compare", str(RUNS / "baseline"), str(RUNS / "patched")]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED  fault" in out and "+ kernel warning: WARNING in nh_ioctl" in out


def test_the_fix_is_not_a_regression(capsys):
    c = compare(load_run(RUNS / "patched"), load_run(RUNS / "baseline"))
    assert [len(ch.vanished) for ch in c.changes] == [2] and not c.regressed
    assert main(["compare", str(RUNS / "patched"), str(RUNS / "baseline")]) == 0
    assert "changed    fault" in capsys.readouterr().out


def test_a_run_against_itself_has_no_change(capsys):
    assert main(["compare", str(RUNS / "patched"), str(RUNS / "patched")]) == 0
    assert "no scenario changed (3 compared)" in capsys.readouterr().out


def test_different_scenario_sets_are_compared_where_they_overlap(tmp_path, capsys):
    shutil.copytree(RUNS / "patched", tmp_path / "fewer")
    doc = json.loads((tmp_path / "fewer" / "results.json").read_text())
    doc["results"] = [r for r in doc["results"] if r["scenario"] != "mm-basic"]
    (tmp_path / "fewer" / "results.json").write_text(json.dumps(doc))
    c = compare(load_run(RUNS / "baseline"), load_run(tmp_path / "fewer"))
    assert c.only_a == ["6.1.0-56-cloud-amd64 mm-basic"] and len(c.changes) == 1
    main(["compare", str(RUNS / "baseline"), str(tmp_path / "fewer")])
    assert "only in A (not compared): 6.1.0-56-cloud-amd64 mm-basic" in capsys.readouterr().out


def test_findings_are_compared_without_what_varies_between_runs():
    assert normalise("khugepaged: [missing]: start #17 pid 130 (1.5s)\n  records: ...") == \
        "khugepaged: [missing]: start #N pid N (Ns)"


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "is not a run directory: it has no results.json"),
    (lambda d: (d / "results.json").write_text("{"), "cannot be read"),
    (lambda d: (d / "results.json").write_text('{"schema": "other"}'), "is not a notifier-harness results file"),
])
def test_not_a_run_is_a_clear_error(tmp_path, capsys, make, message):
    make(tmp_path)
    with pytest.raises(RunDirError) as e:
        load_run(tmp_path)
    assert message in str(e.value)
    assert main(["compare", str(tmp_path), str(RUNS / "baseline")]) == 2
    assert message in capsys.readouterr().err


def test_repro_of_something_that_is_not_a_run(tmp_path, capsys):
    assert main(["repro", str(tmp_path / "nothing" / "smoke")]) == 2
    assert "is not a scenario of a run" in capsys.readouterr().err


def test_repro_of_a_scenario_the_run_does_not_have(tmp_path, capsys):
    shutil.copytree(RUNS / "baseline", tmp_path / "run")
    assert main(["repro", str(tmp_path / "run" / "6.1.0-56-cloud-amd64" / "nosuch")]) == 2
    assert "nosuch is not a scenario of the run" in capsys.readouterr().err
    assert main(["repro", str(tmp_path / "run" / "6.99" / "smoke")]) == 2
    assert "6.99 is not a kernel of the run" in capsys.readouterr().err
