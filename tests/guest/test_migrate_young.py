"""Migration and young bits on real kernels: migrate passes on 6.1 and 6.12 with try_to_migrate_one
reached and judged and every page really moved, its self-test fails with the damage named; aging's
young-bit pairing holds on both (6.12's MGLRU look-around included); damon passes on 6.12 with its
sites judged and is skipped on 6.1 with the option named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.model.callsites import JUDGED_BY
from tests.guest.conftest import run_matrix

# One run of the matrix's scenarios for every test here but the self-test: each kernel boots once.
SCENARIOS = ("migrate", "aging", "damon", "kvm-migrate")


def rows_of(out: Path) -> dict[tuple[str, str], dict]:
    rows = json.loads((out / "results.json").read_text())["results"]
    return {(r["kernel"].split(".")[1], r["scenario"]): r for r in rows}


def judged(row: dict) -> set[str]:
    """The call sites a row reached that its scenario's rules judge (what `coverage` marks with *)."""
    return {site for site in row.get("callsites", {}) if row["scenario"] in JUDGED_BY.get(site, ())}


@pytest.fixture(scope="module")
def matrix(kernels, tmp_path_factory) -> dict[tuple[str, str], dict]:
    out = tmp_path_factory.mktemp("migrate-young") / "run"
    code, printed = run_matrix(out, *SCENARIOS)
    assert code == 0, printed
    return rows_of(out)


def notes_of(row: dict) -> str:
    return " ".join(row["notes"])


def test_every_row_passes_but_damon_on_6_1(matrix):
    assert {key: row["verdict"] for key, row in matrix.items()} == \
        {(minor, name): "skip" if (minor, name) == ("1", "damon") else "pass"
         for minor in ("1", "12") for name in SCENARIOS}


def test_migrate_passes_on_6_1_and_6_12_and_judges_try_to_migrate_one(matrix):
    for minor in ("1", "12"):
        text = notes_of(matrix[(minor, "migrate")])
        for move in ("numa A -> node 1: 256 of 256", "mbind A -> node 0: 256 of 256",
                     "numa T -> node 1: 1024 of 1024", "mbind T -> node 0: 1024 of 1024"):
            assert move in text, text
        assert "pages of the fragmented mapping changed frame" in text
        row = matrix[(minor, "migrate")]
        assert {"try_to_migrate_one", "zap_page_range_single"} <= judged(row), row["callsites"]
        # 256 + 256 pages and 2 + 2 THPs, at least
        assert row["callsites"]["try_to_migrate_one"] >= 516


def test_migrate_self_test_fails_with_the_damage_named(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "-c", "configs/selftest-migrate.yaml", "--kernel", "debian:6.1", "--accel", "tcg",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1, printed
    first, second = json.loads((out / "results.json").read_text())["results"]
    assert first["verdict"] == second["verdict"] == "fail"
    assert any(": [pairing]" in f and "no end" in f for f in first["findings"]), first["findings"]
    assert any(": [end-range]: end #" in f and "does not match its start" in f for f in second["findings"]), \
        second["findings"]


def test_young_bits_reach_the_secondary_mmus_in_aging_and_damon(matrix):
    rows = matrix
    assert rows[("1", "aging")]["verdict"] == rows[("12", "aging")]["verdict"] == "pass"
    aging61, aging612 = (" ".join(rows[(m, "aging")]["notes"]) for m in ("1", "12"))
    # 6.1: classic LRU, folio_referenced_one's clear_flush_young; 6.12: MGLRU's walk and look-around
    assert "paired with their secondary callback" in aging61 and "folio_referenced_one)" in aging61
    assert "lru_gen_look_around" in aging612 and "walk_pud_range" in aging612
    assert "reclaim: 0 primary" not in aging61 + aging612
    # MADV_COLD on 6.12 clears young bits without a callback, by design: allowed, not paired
    assert "khugepaged: 0 primary young-bit clears paired with their secondary callback (none), 1024 allowed" in \
        aging612
    assert rows[("1", "damon")]["verdict"] == "skip"
    assert "CONFIG_DAMON_VADDR is not set" in rows[("1", "damon")]["findings"][0]
    damon = rows[("12", "damon")]
    assert damon["verdict"] == "pass", damon["findings"]
    assert {"damon_ptep_mkold", "damon_pmdp_mkold", "damon_young_pmd_entry", "damon_folio_young_one"} <= \
        judged(damon), damon["callsites"]
    assert "damon_ptep_mkold" in " ".join(damon["notes"]) and "damon_pmdp_mkold" in " ".join(damon["notes"])
    for minor in ("1", "12"):
        assert {"folio_referenced_one"} <= judged(rows[(minor, "aging")]) or minor == "12"
    assert {"lru_gen_look_around", "walk_pte_range"} <= judged(rows[("12", "aging")])


def test_kvm_migrate_passes_on_6_1_and_6_12(matrix):
    for minor in ("1", "12"):
        text = notes_of(matrix[(minor, "kvm-migrate")])
        assert "thp never: 256 of 256 pages" in text and "{'unmap': 256} on the slot" in text, text
        assert "thp huge: 1024 of 1024 pages" in text and "(2 THPs)" in text and "{'unmap': 2} on the slot" in text
        assert "try_to_migrate_one" in matrix[(minor, "kvm-migrate")]["callsites"]
