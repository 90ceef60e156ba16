"""clear_refs on real kernels: clear-refs passes on 6.1 and 6.12 with clear_refs_write reached and
judged, and the self-test that damages the probe's stream fails with the findings that name it."""

from __future__ import annotations

from tests.guest.conftest import run_matrix_passing
from tests.guest.test_madv_free import dropped_end, judged_sites, selftest_rows, shrunk_range


def test_clear_refs_passes_on_6_1_and_6_12_and_judges_clear_refs_write(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    run_matrix_passing(out, capsys, "clear-refs")
    judged = judged_sites(out, "clear-refs")
    assert len(judged) == 2 and all("clear_refs_write" in sites for sites in judged.values()), judged
    for release in judged:
        events = (out / release / "clear-refs" / "clear-refs.events.txt").read_text()
        assert events.count("start SOFT_DIRTY [0x0, 0xffffffffffffffff)") == 1, release


def test_clear_refs_self_test_fails_with_the_damage_named(kernels, tmp_path, capsys):
    first, second = selftest_rows("configs/selftest-clear-refs.yaml", capsys, tmp_path / "run")
    assert dropped_end(first["findings"]), first["findings"]
    assert shrunk_range(second["findings"]), second["findings"]
