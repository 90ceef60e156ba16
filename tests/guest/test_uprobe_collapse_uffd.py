"""uprobe, shmem-collapse and pagemap-uffd on 6.1 and 6.12: they pass, they reach and judge their
call sites (the coverage map), and a damaged stream fails each with the finding that names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.coverage import coverage_map
from tests.guest.conftest import run_matrix

# Per minor version: scenario -> the call sites its per-operation rules judge.
SITES = {
    "1": {"uprobe": ("__replace_page",),
          "shmem-collapse": ("try_to_unmap_one", "collapse_and_free_pmd", "collapse_huge_page")},
    "12": {"uprobe": ("__replace_page",),
           "shmem-collapse": ("try_to_unmap_one", "retract_page_tables", "collapse_pte_mapped_thp",
                              "collapse_huge_page"),
           "pagemap-uffd": ("do_pagemap_scan", "move_pages_pte", "move_pages_huge_pmd", "change_pud_range")},
}


def rows(out: Path) -> dict[tuple[str, str], dict]:
    return {(r["kernel"].split(".")[1], r["scenario"]): r for r in json.loads((out / "results.json").read_text())["results"]}


def judged_lines(text: str) -> dict[str, dict[str, str]]:
    """The coverage map's site lines per kernel (minor version): site -> its line."""
    lines: dict[str, dict[str, str]] = {}
    kernel = ""
    for line in text.splitlines():
        if line and not line.startswith(" "):
            kernel = line.split(".")[1] if line[0].isdigit() else ""
        elif kernel and line.startswith("    "):
            words = line.split()
            if len(words) > 2:
                lines.setdefault(kernel, {})[words[1]] = line
    return lines


def assert_judged(out: Path, scenarios: tuple[str, ...]) -> None:
    found = rows(out)
    text = coverage_map(json.loads((out / "results.json").read_text()))
    lines = judged_lines(text)
    for minor, per_scenario in SITES.items():
        for scenario, sites in per_scenario.items():
            if scenario not in scenarios:
                continue
            for site in sites:
                assert found[(minor, scenario)]["callsites"].get(site), (minor, scenario, site)
                line = lines[minor][site]
                assert " judged " in line and f"{scenario}*" in line, line


@pytest.fixture(scope="module")
def matrix_run(kernels, tmp_path_factory) -> Path:
    """One run of the three scenarios on both kernels, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("uprobe-collapse-uffd") / "run"
    code, printed = run_matrix(out, "uprobe", "shmem-collapse", "pagemap-uffd")
    assert code == 0, printed
    return out


def test_uprobe_and_shmem_collapse_pass_and_judge_their_sites(matrix_run):
    found = rows(matrix_run)
    assert {found[(minor, name)]["verdict"] for minor in ("1", "12") for name in ("uprobe", "shmem-collapse")} == \
        {"pass"}
    assert_judged(matrix_run, ("uprobe", "shmem-collapse"))


def test_pagemap_uffd_passes_on_612_and_skips_on_61(matrix_run):
    found = rows(matrix_run)
    assert found[("1", "pagemap-uffd")]["verdict"] == "skip"
    assert "PAGEMAP_SCAN" in found[("1", "pagemap-uffd")]["findings"][0]
    assert found[("12", "pagemap-uffd")]["verdict"] == "pass"
    assert_judged(matrix_run, ("pagemap-uffd",))


def test_a_damaged_stream_fails_each_with_the_named_finding(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "-c", "configs/selftest-uprobe-collapse-uffd.yaml", "--accel", "tcg", "--out", str(out)])
    capsys.readouterr()
    assert code == 1
    found = rows(out)
    dropped = "[pairing]", "no end"
    shrunk = "[end-range]", "does not match its start"
    for (minor, scenario), damage in {("1", "uprobe"): dropped, ("12", "uprobe"): dropped,
                                      ("1", "shmem-collapse"): shrunk, ("12", "shmem-collapse"): shrunk,
                                      ("12", "pagemap-uffd"): shrunk}.items():
        row = found[(minor, scenario)]
        assert row["verdict"] == "fail", (minor, scenario)
        assert any(all(w in f for w in damage) for f in row["findings"]), (minor, scenario, row["findings"])
    assert found[("1", "pagemap-uffd")]["verdict"] == "skip"
