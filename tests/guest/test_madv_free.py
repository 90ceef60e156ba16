"""MADV_FREE and MADV_PAGEOUT on real kernels: madv-free and madv-pageout pass on 6.1 and 6.12 with
their call sites reached and judged (the young site of each version's reclaim too), and the
self-test that damages the probe's stream fails with the findings that name the damage."""

from __future__ import annotations

import json
import re
from pathlib import Path

from harness.cli import main
from harness.coverage import coverage_map
from tests.guest.conftest import run_matrix_passing

COMMON = {"madvise_free_single_vma", "try_to_unmap_one", "try_to_migrate_one", "__split_huge_pmd"}
# Reclaim's young callback: folio_referenced_one's clear_flush_young on 6.1 (classic LRU), MGLRU's
# look-around on 6.12 (lru_gen enabled there).
SITES = {"1": COMMON | {"folio_referenced_one"}, "12": COMMON | {"lru_gen_look_around"}}


def judged_sites(out: Path, *scenarios: str) -> dict[str, set[str]]:
    """Per kernel release, the call sites `coverage` marks judged by one of `scenarios` (marked *)."""
    judged: dict[str, set[str]] = {}
    release = ""
    for line in coverage_map(json.loads((out / "results.json").read_text())).splitlines():
        if line and not line.startswith(" "):
            release = line.split()[0]
        words = line.split()
        status = next((i for i, w in enumerate(words) if w == "judged"), None)
        if status is not None and status > 0 and any(f"{s}*" in words[status + 1:] for s in scenarios):
            judged.setdefault(release, set()).add(words[status - 1] if words[status - 1][0] != "(" else
                                                  words[status - 2])
    return judged


def selftest_rows(config: str, capsys, out: Path) -> list[dict]:
    """A self-test config on 6.1: it must exit 1 with every row failed."""
    code = main(["run", "-c", config, "--kernel", "debian:6.1", "--accel", "tcg", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1, printed
    rows = json.loads((out / "results.json").read_text())["results"]
    assert rows and {r["verdict"] for r in rows} == {"fail"}, rows
    return rows


def dropped_end(findings: list[str]) -> bool:
    return any(": [pairing]" in f and "no end" in f for f in findings)


def shrunk_range(findings: list[str]) -> bool:
    return any(": [end-range]: end #" in f and "does not match its start" in f for f in findings)


def test_madv_free_and_pageout_pass_on_6_1_and_6_12_and_judge_their_sites(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    notes = run_matrix_passing(out, capsys, "madv-free", "madv-pageout")
    for minor in ("1", "12"):
        discarded = re.search(r"(\d+) of 512 pages discarded", notes[(minor, "madv-free")])
        assert discarded and int(discarded.group(1)) > 0, notes[(minor, "madv-free")]
        swapped = re.search(r"(\d+) of 256 pages swapped out", notes[(minor, "madv-pageout")])
        assert swapped and int(swapped.group(1)) > 0, notes[(minor, "madv-pageout")]
    judged = judged_sites(out, "madv-free", "madv-pageout")
    assert len(judged) == 2
    for release, sites in judged.items():
        assert SITES[release.split(".")[1]] <= sites, (release, sites)


def test_madv_free_self_test_fails_with_the_damage_named(kernels, tmp_path, capsys):
    rows = {r["scenario"]: r for r in selftest_rows("configs/selftest-madv-free.yaml", capsys, tmp_path / "run")}
    assert shrunk_range(rows["madv-free"]["findings"]), rows["madv-free"]["findings"]
    assert dropped_end(rows["madv-pageout"]["findings"]), rows["madv-pageout"]["findings"]
