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


def test_rows_missing_from_b_are_a_regression_and_rows_only_in_b_are_not(tmp_path, capsys):
    """A patched run killed after one scenario never ran the rest: a CI gate must not pass on it."""
    shutil.copytree(RUNS / "baseline", tmp_path / "fewer")
    doc = json.loads((tmp_path / "fewer" / "results.json").read_text())
    doc["results"] = [r for r in doc["results"] if r["scenario"] != "mm-basic"]
    (tmp_path / "fewer" / "results.json").write_text(json.dumps(doc))
    c = compare(load_run(RUNS / "baseline"), load_run(tmp_path / "fewer"))
    assert c.only_a == ["6.1.0-56-cloud-amd64 mm-basic"] and not c.changes and c.regressed
    assert main(["compare", str(RUNS / "baseline"), str(tmp_path / "fewer")]) == 1
    assert "MISSING in B (1, a regression: B did not run them): 6.1.0-56-cloud-amd64 mm-basic" in \
        capsys.readouterr().out
    c = compare(load_run(tmp_path / "fewer"), load_run(RUNS / "baseline"))
    assert c.only_b == ["6.1.0-56-cloud-amd64 mm-basic"] and not c.regressed
    assert main(["compare", str(tmp_path / "fewer"), str(RUNS / "baseline")]) == 0
    assert "only in B (not compared): 6.1.0-56-cloud-amd64 mm-basic" in capsys.readouterr().out


def test_findings_are_compared_without_what_varies_between_runs():
    assert normalise("khugepaged: [missing]: start #17 pid 130 (1.5s)\n  records: ...") == \
        "khugepaged: [missing]: start #N pid N (Ns)"


def _baseline_with(change):
    def make(d):
        doc = json.loads((RUNS / "baseline" / "results.json").read_text())
        change(doc)
        (d / "results.json").write_text(json.dumps(doc))
    return make


def _set(path, value):
    def change(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def _drop(path):
    def change(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return change


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "is not a run directory: it has no results.json"),
    (lambda d: (d / "results.json").write_text("{"), "is not valid JSON"),
    (lambda d: (d / "results.json").write_text('{"schema": "other"}'), "not a notifier-harness results file"),
    (lambda d: (d / "results.json").write_bytes(b"\xff\xfe\x00binary"), "is not UTF-8 text"),
    (lambda d: (d / "results.json").write_text("[" * 100000 + "]" * 100000), "is not valid JSON"),
    (lambda d: (d / "results.json").write_text("[]"), "not a JSON object"),
    (_baseline_with(_drop(["run"])), "'run' is missing or not an object"),
    (_baseline_with(_drop(["results"])), "'results' is missing or not a list"),
    (_baseline_with(_set(["run", "config", "kernels"], "debian:6.1")), "'run.config.kernels' is missing"),
    (_baseline_with(_drop(["results", 0, "kernel_spec"])), "results[0].kernel_spec is missing or not a string"),
    (_baseline_with(_set(["results", 1, "verdict"], "great")), "results[1].verdict is 'great', not one of"),
    (_baseline_with(_set(["results", 0, "findings"], [1, {"a": 2}])), "results[0].findings is not a list of strings"),
    (_baseline_with(_set(["results", 0], "row")), "results[0] is not an object"),
])
def test_not_a_run_is_a_clear_error(tmp_path, capsys, make, message):
    make(tmp_path)
    with pytest.raises(RunDirError) as e:
        load_run(tmp_path)
    assert message in str(e.value)
    assert main(["compare", str(tmp_path), str(RUNS / "baseline")]) == 2
    assert main(["compare", str(RUNS / "baseline"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 2


def test_repro_of_something_that_is_not_a_run(tmp_path, capsys):
    assert main(["repro", str(tmp_path / "nothing" / "smoke")]) == 2
    assert "is not a scenario of a run" in capsys.readouterr().err


def test_repro_of_a_scenario_the_run_does_not_have(tmp_path, capsys):
    shutil.copytree(RUNS / "baseline", tmp_path / "run")
    assert main(["repro", str(tmp_path / "run" / "6.1.0-56-cloud-amd64" / "nosuch")]) == 2
    assert "nosuch is not a scenario of the run" in capsys.readouterr().err
    assert main(["repro", str(tmp_path / "run" / "6.99" / "smoke")]) == 2
    assert "6.99 is not a kernel of the run" in capsys.readouterr().err


def test_repro_of_a_kernel_that_never_resolved_reruns_it(tmp_path, capsys):
    """The repro hint of a kernel that could not be had names a directory that exists, and repro of it
    tries that kernel again (and says why it still cannot be had)."""
    out = tmp_path / "run"
    assert main(["run", "--kernel", f"tree:{tmp_path / 'no-such-tree'}", "--scenario", "smoke",
                 "--out", str(out)]) == 2
    printed = capsys.readouterr().out
    hint = next(line.split("repro ", 1)[1] for line in printed.splitlines() if "repro: notifier-harness repro" in line)
    assert Path(hint).is_dir() and "no-such-tree" in (Path(hint) / "error.txt").read_text()
    assert main(["repro", hint, "--out", str(tmp_path / "again")]) == 2
    [row] = json.loads((tmp_path / "again" / "results.json").read_text())["results"]
    assert row["verdict"] == "error" and "no-such-tree" in row["findings"][0]


def _validate(tmp_path, monkeypatch, capsys, baseline_run: Path, patched_run: Path) -> tuple[int, str]:
    """`validate` with its two runs replaced by recorded ones (the kernels are not booted here)."""
    recorded = {"baseline": baseline_run, "patched": patched_run}

    def finish(run):
        out = run.out_dir
        assert [k.text for k in run.config.kernels] == [{"baseline": "debian:6.1",
                                                        "patched": "tree:/src/patched"}[out.name]]
        shutil.copytree(recorded[out.name], out)
        statuses = {r["verdict"] for r in json.loads((out / "results.json").read_text())["results"]}
        return 2 if "error" in statuses or not statuses else 1 if "fail" in statuses else 0
    monkeypatch.setattr("harness.cli._finish", finish)
    code = main(["validate", "--baseline", "debian:6.1", "--kernel", "tree:/src/patched",
                 "--out", str(tmp_path / "v")])
    return code, capsys.readouterr().out


def _with_rows(tmp_path, name, change):
    shutil.copytree(RUNS / "baseline", tmp_path / name)
    doc = json.loads((tmp_path / name / "results.json").read_text())
    change(doc["results"])
    (tmp_path / name / "results.json").write_text(json.dumps(doc))
    return tmp_path / name


def test_validate_exits_0_without_a_regression(tmp_path, monkeypatch, capsys):
    code, out = _validate(tmp_path, monkeypatch, capsys, RUNS / "baseline", RUNS / "baseline")
    assert code == 0 and "no scenario changed (3 compared)" in out


def test_validate_exits_1_on_a_regression_and_on_missing_rows(tmp_path, monkeypatch, capsys):
    code, out = _validate(tmp_path, monkeypatch, capsys, RUNS / "baseline", RUNS / "patched")
    assert code == 1 and "REGRESSED  fault" in out
    stopped = _with_rows(tmp_path, "stopped", lambda rows: rows.__delitem__(slice(1, None)))
    code, out = _validate(tmp_path / "2", monkeypatch, capsys, RUNS / "baseline", stopped)
    assert code == 1 and "MISSING in B (2, a regression" in out


def test_validate_exits_2_when_a_run_could_not_tell(tmp_path, monkeypatch, capsys):
    def error_everywhere(rows):
        for r in rows:
            r["verdict"], r["findings"] = "error", ["kernel debian:6.1: apt-get download failed"]
    broken = _with_rows(tmp_path, "broken", error_everywhere)
    code, out = _validate(tmp_path, monkeypatch, capsys, broken, broken)
    assert code == 2 and "no scenario changed" in out


def test_compare_collapses_a_rule_broken_page_after_page():
    from harness.compare import collapse
    findings = [f"ksm: [change-pte] change_pte {0x7e0000000000 + i * 4096:#x} outside any window" for i in range(64)]
    assert collapse(findings + ["kernel warning: WARNING in x"]) == [
        "ksm: [change-pte] change_pte outside any window x64, 0x7e0000000000-0x7e000003f000",
        "kernel warning: WARNING in x"]
    assert collapse(findings[:1]) == findings[:1]
