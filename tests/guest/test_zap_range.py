"""The kernel's zaps on a process's behalf on real kernels: zap-range passes on 6.1 (zap_page_range)
and 6.12 (zap_page_range_single) with the site reached and judged, and the self-test that damages
the probe's stream fails with the findings that name it."""

from __future__ import annotations

import json

from tests.guest.conftest import run_matrix_passing
from tests.guest.test_madv_free import dropped_end, judged_sites, selftest_rows, shrunk_range

SITE = {"1": "zap_page_range", "12": "zap_page_range_single"}


def test_zap_range_passes_on_6_1_and_6_12_and_judges_each_versions_zap(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    run_matrix_passing(out, capsys, "zap-range")
    rows = json.loads((out / "results.json").read_text())["results"]
    for row in rows:
        # the [vvar] zap and two zero-copy receives
        assert row["callsites"].get(SITE[row["kernel"].split(".")[1]], 0) >= 3, row["callsites"]
    judged = judged_sites(out, "zap-range")
    assert len(judged) == 2
    for release, sites in judged.items():
        assert SITE[release.split(".")[1]] in sites, (release, sites)


def test_zap_range_self_test_fails_with_the_damage_named(kernels, tmp_path, capsys):
    first, second = selftest_rows("configs/selftest-zap-range.yaml", capsys, tmp_path / "run")
    assert dropped_end(first["findings"]), first["findings"]
    assert shrunk_range(second["findings"]), second["findings"]
