"""Shared file mappings on a real block filesystem (zram, ext4) on real kernels: filemap passes on
6.1 and 6.12 with writeback's and the zaps' call sites reached and judged, and the self-test that
drops one end fails on both with the finding that names it."""

from __future__ import annotations

import json

from harness.cli import main
from harness.coverage import coverage_map
from tests.guest.conftest import run_matrix_passing

SITES = ("page_vma_mkclean_one", "zap_page_range_single")


def judged_by(out, scenario: str) -> dict[str, set[str]]:
    """Per kernel release, the call sites the coverage map marks judged by `scenario`."""
    text = coverage_map(json.loads((out / "results.json").read_text()))
    judged: dict[str, set[str]] = {}
    release = ""
    for line in text.splitlines():
        if line and not line.startswith(" "):
            release = line.split()[0]
        words = line.split()
        if len(words) >= 4 and words[2] == "judged" and f"{scenario}*" in words[3:]:
            judged.setdefault(release, set()).add(words[1])
    return judged


def test_filemap_passes_on_6_1_and_6_12_and_judges_writeback_and_zaps(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    notes = run_matrix_passing(out, capsys, "filemap")
    # 16 + 9 + 4 pages written back under msync/fsync; 6.1's punch-hole writes back two more first.
    assert "31 PROTECTION_PAGE" in notes[("1", "filemap")]
    assert "29 PROTECTION_PAGE" in notes[("12", "filemap")]
    rows = json.loads((out / "results.json").read_text())["results"]
    for row in rows:
        assert all(row["callsites"].get(site) for site in SITES), row["callsites"]
        assert row["callsites"]["page_vma_mkclean_one"] >= 29
    judged = judged_by(out, "filemap")
    assert len(judged) == 2 and all(set(SITES) <= sites for sites in judged.values()), judged


def test_filemap_with_a_dropped_end_fails_with_the_pairing_finding(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "-c", "configs/selftest-filemap.yaml", "--accel", "tcg", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1, printed
    rows = json.loads((out / "results.json").read_text())["results"]
    assert len(rows) == 2 and {r["verdict"] for r in rows} == {"fail"}
    for row in rows:
        assert any(f.startswith("filemap: [pairing]: start #") and "no end" in f.splitlines()[0]
                   for f in row["findings"]), row["findings"]
