"""hugetlb on real kernels: hugetlb passes on 6.1 and 6.12 with every hugetlb call site of the
version reached and judged (6.12's unmap_hugepage_range through the probe on the child), and the
self-test that shrinks one range fails on both with the finding that names it."""

from __future__ import annotations

import json

from harness.cli import main
from tests.guest.conftest import run_matrix_passing
from tests.guest.test_filemap import judged_by

COMMON = {"copy_hugetlb_page_range", "hugetlb_change_protection", "hugetlb_unshare_pmds", "hugetlb_wp",
          "move_hugetlb_page_tables", "zap_page_range_single", "unmap_vmas"}
SITES = {"1": COMMON | {"__unmap_hugepage_range"}, "12": COMMON | {"unmap_hugepage_range"}}


def test_hugetlb_passes_on_6_1_and_6_12_and_judges_every_hugetlb_site(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    notes = run_matrix_passing(out, capsys, "hugetlb")
    for minor in ("1", "12"):
        assert "the child maps 0 kB there afterwards" in notes[(minor, "hugetlb")]
    rows = json.loads((out / "results.json").read_text())["results"]
    for row in rows:
        minor = row["kernel"].split(".")[1]
        assert SITES[minor] <= set(row["callsites"]), row["callsites"]
        assert not row["callsites_unresolved"], row["callsites_unresolved"]
    judged = judged_by(out, "hugetlb")
    assert len(judged) == 2
    for release, sites in judged.items():
        assert SITES[release.split(".")[1]] <= sites, (release, sites)


def test_hugetlb_with_a_shrunk_range_fails_with_the_end_range_finding(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "-c", "configs/selftest-hugetlb.yaml", "--accel", "tcg", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1, printed
    rows = json.loads((out / "results.json").read_text())["results"]
    assert len(rows) == 2 and {r["verdict"] for r in rows} == {"fail"}
    for row in rows:
        assert any(": [end-range]: end #" in f and "does not match its start" in f for f in row["findings"]), \
            row["findings"]
