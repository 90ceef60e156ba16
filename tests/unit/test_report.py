import json
import xml.etree.ElementTree as ET

from harness.report import RESULTS_SCHEMA, junit_xml, summary_table, write_reports
from harness.verdict import Result, Verdict, exit_code


def result(scenario: str, verdict: str, findings=()) -> Result:
    return Result(kernel="6.1.0-56-cloud-amd64", kernel_spec="debian:6.1", accel="tcg", scenario=scenario,
                  verdict=verdict, findings=tuple(findings), duration_s=1.25, seed=3)  # type: ignore[arg-type]


RESULTS = [result("smoke", "pass"), result("cow", "fail", ["missing end", "second"]),
           result("oom", "error", ["SSH dropped"]), result("kvm", "skip", ["no /dev/kvm"])]


def test_results_json_has_the_documented_fields(tmp_path):
    write_reports(tmp_path, RESULTS, {"seed": 3})
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["schema"] == RESULTS_SCHEMA and doc["run"] == {"seed": 3}
    for row in doc["results"]:
        assert {"kernel", "kernel_spec", "accel", "scenario", "verdict", "findings", "duration_s", "seed",
                "notes", "reports", "artifacts", "callsites", "callsites_unresolved"} == set(row)
        assert row["verdict"] in ("pass", "fail", "error", "skip") and isinstance(row["findings"], list)
    assert doc["results"][1]["findings"] == ["missing end", "second"]


def test_junit_has_one_case_per_kernel_and_scenario():
    suite = ET.fromstring(junit_xml(RESULTS))
    assert suite.tag == "testsuite"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("4", "1", "1", "1")
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases][0] == ("6.1.0-56-cloud-amd64", "smoke")
    assert cases[0].find("failure") is None and cases[0].find("error") is None
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == "missing end" and "second" in (failure.text or "")
    assert cases[2].find("error").get("message") == "SSH dropped"
    assert cases[3].find("skipped").get("message") == "no /dev/kvm"


def test_summary_table_lists_every_row():
    table = summary_table(RESULTS).splitlines()
    assert table[0].split()[:4] == ["kernel", "scenario", "verdict", "time"]
    assert "FAIL" in table[2] and table[2].endswith("missing end")


def test_exit_codes():
    assert exit_code([result("a", "pass"), result("b", "skip")]) == 0
    assert exit_code([result("a", "pass"), result("b", "fail")]) == 1
    assert exit_code([result("a", "fail"), result("b", "error")]) == 2
    assert exit_code([]) == 2


def test_verdict_from_findings():
    assert Verdict.from_findings([]).status == "pass"
    assert Verdict.from_findings(["x"]).status == "fail"
