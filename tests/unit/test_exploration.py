"""What an exploration leaves behind (harness/scenarios/exploration.py): exploration.json with the
scenario's tallies and the time to the first failure apart from the shrinking time, and the verdict."""

from __future__ import annotations

import json
from pathlib import Path

from harness.config import ScenarioConfig
from harness.model.versions import features_for
from harness.scenarios.base import ScenarioContext
from harness.scenarios.exploration import Exploration, conclude

PASSED = Exploration(examples=10, ops=200, seconds=20.0, failure=None, first_failure_s=None,
                     first_failure_example=0, report="", requests=())
FAILED = Exploration(examples=12, ops=250, seconds=30.0, failure="slot 1 was deleted", first_failure_s=4.0,
                     first_failure_example=3, report="state = Memslot()\nstate.delete()",
                     requests=('{"op": "create"}', '{"op": "region"}'))


def context(out_dir: Path) -> ScenarioContext:
    return ScenarioContext(guest=None, features=features_for((6, 12)),  # type: ignore[arg-type]
                           config=ScenarioConfig(name="memslot"), seed=7, out_dir=out_dir, console_tail=lambda: "")


def test_a_pass_keeps_the_notes_and_the_tallies(tmp_path):
    verdict = conclude(context(tmp_path), PASSED, "off", ("rate",), {"exits": 5})
    assert verdict.status == "pass" and verdict.notes == ("rate",)
    saved = json.loads((tmp_path / "exploration.json").read_text())
    assert saved["exits"] == 5 and saved["first_failure_s"] is None and saved["shrink_s"] is None
    assert saved["minimal_requests"] == [] and not (tmp_path / "minimal-sequence.txt").exists()


def test_a_failure_names_the_minimal_sequence_and_when_it_was_found(tmp_path):
    verdict = conclude(context(tmp_path), FAILED, "skip-delete", ("rate",))
    assert verdict.status == "fail" and "slot 1 was deleted" in verdict.findings[0]
    assert "minimal sequence (2 requests to minivmm, seed 7)" in verdict.findings[0]
    assert verdict.notes == ("rate", "first failing example (#3) after 4.0 s, shrunk in 26.0 s")
    saved = json.loads((tmp_path / "exploration.json").read_text())
    assert (saved["first_failure_s"], saved["first_failure_example"], saved["shrink_s"]) == (4.0, 3, 26.0)
    assert saved["vmm_corrupt"] == "skip-delete" and len(saved["minimal_requests"]) == 2
    assert (tmp_path / "minimal-sequence.txt").read_text() == FAILED.report + "\n"
