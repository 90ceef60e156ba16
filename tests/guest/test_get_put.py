"""mmu_notifier_get/put on real kernels: get-put passes on 6.1 and 6.12, and the self-test
that puts once too often fails on both with the kernel's WARN and the model's finding."""

from __future__ import annotations

import json

from harness.cli import main
from tests.guest.conftest import run_matrix_passing


def test_get_put_passes_on_6_1_and_6_12(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    notes = run_matrix_passing(out, capsys, "get-put")
    for minor in ("1", "12"):
        text = notes[(minor, "get-put")]
        # Each plan ran and was judged: the subscriptions' lifetimes are in the notes.
        assert "refs:" in text and "#2: alloc_notifier" in text          # a new subscription after the last put
        assert text.count("release #") == 2                               # exit-held and exit; refs releases nothing
        assert text.count("free_notifier #") == 4 and "never freed" not in text
    for release in (k.name for k in out.iterdir() if k.is_dir()):
        steps = json.loads((out / release / "get-put" / "exit.steps.json").read_text())
        assert [(s["step"], s["ret"], s["errno"]) for s in steps][2] == ("get", -1, 3)   # ESRCH after the exit


def test_a_put_once_too_often_fails_with_the_kernels_warning_and_the_models_finding(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "-c", "configs/selftest-get-put.yaml", "--accel", "tcg", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1, printed
    rows = json.loads((out / "results.json").read_text())["results"]
    assert len(rows) == 2 and {r["verdict"] for r in rows} == {"fail"}
    for row in rows:
        assert row["findings"][0] == "kernel warning: WARNING in mmu_notifier_put"
        assert any(f.startswith("overput: [gp-put]: a put of #1 with no reference left") for f in row["findings"])
        assert row["reports"] == ["WARNING in mmu_notifier_put"]
