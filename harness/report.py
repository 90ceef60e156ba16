"""results.json, junit.xml and the summary table, written after every scenario
so a run that dies half-way still leaves what it learnt."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from harness.printable import printable
from harness.verdict import Result

RESULTS_SCHEMA = "notifier-harness/results/1"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def results_document(results: Sequence[Result], run: dict[str, Any]) -> dict[str, Any]:
    return {"schema": RESULTS_SCHEMA, "run": run, "results": [r.to_json() for r in results]}


def junit_xml(results: Sequence[Result], consoles: Optional[Mapping[str, str]] = None) -> str:
    """One test case per kernel x scenario; classname is the kernel release.  A failure carries
    the findings (the kernel's report title first); system-out the scenario's console slice
    (`consoles`, by the result's artifacts directory)."""
    suite = ET.Element("testsuite", name="notifier-harness", tests=str(len(results)),
                       failures=str(sum(r.verdict == "fail" for r in results)),
                       errors=str(sum(r.verdict == "error" for r in results)),
                       skipped=str(sum(r.verdict == "skip" for r in results)),
                       time=f"{sum(r.duration_s for r in results):.3f}")
    for r in (r.printable() for r in results):
        case = ET.SubElement(suite, "testcase", classname=r.kernel, name=r.scenario, time=f"{r.duration_s:.3f}")
        first = r.findings[0] if r.findings else ""
        body = "\n".join(r.findings)
        if r.verdict == "fail":
            ET.SubElement(case, "failure", message=first).text = body
        elif r.verdict == "error":
            ET.SubElement(case, "error", message=first).text = body
        elif r.verdict == "skip":
            ET.SubElement(case, "skipped", message=first)
        out = [f"accel: {r.accel}", f"seed: {r.seed}", *r.notes]
        if r.artifacts:
            out.append(f"artifacts: {r.artifacts}")
        console = (consoles or {}).get(r.artifacts, "")
        if console:
            out += ["--- console ---", printable(console)]
        ET.SubElement(case, "system-out").text = "\n".join(out)
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def write_reports(out_dir: Path, results: Sequence[Result], run: dict[str, Any],
                  consoles: Optional[Mapping[str, str]] = None) -> None:
    _atomic_write(out_dir / "results.json", json.dumps(results_document(results, run), indent=2) + "\n")
    _atomic_write(out_dir / "junit.xml", junit_xml(results, consoles))


def summary_table(results: Sequence[Result]) -> str:
    rows = [("kernel", "scenario", "verdict", "time", "accel", "first finding")]
    for r in (r.printable() for r in results):
        first = r.findings[0] if r.findings else ""
        rows.append((r.kernel, r.scenario, r.verdict.upper(), f"{r.duration_s:.1f}s", r.accel,
                     first if len(first) <= 100 else first[:97] + "..."))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths)) + "  " + row[5] for row in rows]
    return "\n".join(line.rstrip() for line in lines)
