"""A user's own program under the oracle: a small static C program doing mmap, mprotect, MADV_DONTNEED
and munmap passes on 6.1; the probe's drop-end corruption makes it fail with the contract finding."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from harness.cli import main

SOURCE = Path(__file__).resolve().parent.parent / "data" / "workload" / "mmprog.c"


def build(tmp_path: Path) -> Path:
    program = tmp_path / "mmprog"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(program), str(SOURCE)], check=True)
    return program


def test_a_users_program_passes_and_keeps_its_output(kernels, tmp_path, capsys):
    program = build(tmp_path)
    out = tmp_path / "run"
    code = main(["run", "--kernel", "debian:6.1", "--accel", "tcg", "--workload", str(program), "--out", str(out),
                 "--", "5"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    [row] = json.loads((out / "results.json").read_text())["results"]
    assert (row["scenario"], row["verdict"]) == ("workload", "pass")
    assert "mmprog [\"5\"]: exited with status 0" in row["notes"][0]
    assert (out / row["artifacts"] / "output.txt").read_text() == "5 rounds\n"
    events = (out / row["artifacts"] / "workload.events.txt").read_text()
    assert "start UNMAP" in events and "release" in events
    assert row["callsites"].get("unmap_vmas") and row["callsites"].get("zap_page_range_single")


def test_a_broken_stream_fails_with_the_contract_finding(kernels, tmp_path, capsys):
    program = build(tmp_path)
    config = tmp_path / "corrupt.yaml"
    config.write_text(f"kernels: [debian:6.1]\nmachine: {{accel: tcg}}\n"
                      f"scenarios: [{{name: workload, path: {program}, args: [3], probe_corrupt: drop-end}}]\n")
    out = tmp_path / "corrupt"
    assert main(["run", "-c", str(config), "--out", str(out)]) == 1
    [row] = json.loads((out / "results.json").read_text())["results"]
    # The dropped end leaves a window open: a [pairing] finding, and whatever else the open window
    # makes of the records after it.
    assert row["verdict"] == "fail" and any(f.startswith("workload: [pairing]") for f in row["findings"])
