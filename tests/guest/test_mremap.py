"""mremap on real kernels: mremap passes on 6.1 and 6.12 with move_page_tables, unmap_vmas and the
THP split reached and judged, 6.12's realigned window seen where the model puts it, and the
self-test that damages the probe's stream fails with the findings that name the damage."""

from __future__ import annotations

from tests.guest.conftest import run_matrix_passing
from tests.guest.test_madv_free import dropped_end, judged_sites, selftest_rows, shrunk_range

SITES = {"move_page_tables", "unmap_vmas", "__split_huge_pmd"}
S9 = 0x7E0000000000 + 9 * (1 << 30)


def test_mremap_passes_on_6_1_and_6_12_and_judges_move_page_tables(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    run_matrix_passing(out, capsys, "mremap")
    judged = judged_sites(out, "mremap")
    assert len(judged) == 2 and all(SITES <= sites for sites in judged.values()), judged
    for release in judged:
        events = (out / release / "mremap" / "4k.events.txt").read_text()
        realigned = f"start UNMAP [{S9:#x}, {S9 + (6 << 20):#x})" in events
        assert realigned == (".12." in release), release


def test_mremap_self_test_fails_with_the_damage_named(kernels, tmp_path, capsys):
    first, second = selftest_rows("configs/selftest-mremap.yaml", capsys, tmp_path / "run")
    assert dropped_end(first["findings"]), first["findings"]
    assert shrunk_range(second["findings"]), second["findings"]
