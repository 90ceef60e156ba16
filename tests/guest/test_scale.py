"""Scale-out on real guests: two kernels booted at once give the rows one kernel after the other
gives, and a run cut into shards and merged again is the run.

What a live kernel is observed to do varies between any two runs, however they are scheduled: how
many notifier windows a workload's startup opens, how many calls each call site made (the rows'
counting notes and `callsites`).  Those are compared as the facts they are (the same notes, numbers
aside; a row that reached call sites in one run reached some in the other), everything else field
by field; times are left out.  The exact equality, counts included, is the unit test's on fake
machines (tests/unit/test_runner.py, tests/unit/test_shard.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from harness.cli import main

# Cheap scenarios on both kernels: four rows a kernel, one boot each.
CONFIG = """\
kernels:
  - debian:6.1
  - debian:6.12
machine:
  cpus: 2
  memory: 2G
  accel: tcg
  boot_timeout: 120
scenarios:
  - name: smoke
    timeout: 120
  - name: mm-basic
    timeout: 120
  - name: cow
    timeout: 120
  - name: get-put
    timeout: 120
"""

EXACT = ("kernel", "kernel_spec", "accel", "scenario", "verdict", "findings", "seed", "reports", "artifacts",
         "callsites_unresolved")


def _stable(row: dict[str, Any]) -> dict[str, Any]:
    kept = {k: row.get(k) for k in EXACT}
    kept["notes"] = [re.sub(r"\d+(\.\d+)?", "N", n) for n in row.get("notes", [])]
    return kept


def _rows(run: Path) -> list[dict[str, Any]]:
    return list(json.loads((run / "results.json").read_text())["results"])


def _run(config: Path, out: Path, *extra: str) -> None:
    assert main(["run", "-c", str(config), "--out", str(out), *extra]) == 0, f"run {' '.join(extra)} failed"


def test_two_kernels_at_once_and_two_shards_merged_give_the_rows_of_one_at_a_time(kernels, tmp_path, capsys):
    config = tmp_path / "scale.yaml"
    config.write_text(CONFIG)
    one, two = tmp_path / "jobs1", tmp_path / "jobs2"
    _run(config, one, "--jobs", "1")
    _run(config, two, "--jobs", "2")
    a, b = _rows(one), _rows(two)
    assert len(a) == 8 and all(r["verdict"] == "pass" for r in a), [(r["scenario"], r["verdict"]) for r in a]
    assert [_stable(r) for r in b] == [_stable(r) for r in a]
    # Both runs reached the sites the scenarios exist for (smoke reaches none of its own).
    for ra, rb in zip(a, b):
        assert bool(ra["callsites"]) == bool(rb["callsites"]), (ra["scenario"], ra["callsites"], rb["callsites"])
    junit = [re.findall(r'<testcase classname="([^"]+)" name="([^"]+)"', (d / "junit.xml").read_text())
             for d in (one, two)]
    assert junit[0] == junit[1] and len(junit[0]) == 8

    # The same slots cut in two, each part run on its own (as two CI machines would), then merged.
    parts = [tmp_path / f"shard{k}" for k in (1, 2)]
    for k, part in enumerate(parts, 1):
        _run(config, part, "--shard", f"{k}/2", "--jobs", "1")
    assert sorted(len(_rows(p)) for p in parts) == [4, 4]
    merged = tmp_path / "merged"
    assert main(["merge", *map(str, parts), "--out", str(merged)]) == 0
    assert [_stable(r) for r in _rows(merged)] == [_stable(r) for r in a]
    capsys.readouterr()
    assert main(["compare", str(one), str(merged)]) == 0, capsys.readouterr().out
