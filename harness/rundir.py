"""Reading a finished (or half-finished) run directory back: its results and resolved config."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

from harness.config import Config, parse_config
from harness.errors import HarnessError
from harness.report import RESULTS_SCHEMA


class RunDirError(HarnessError):
    """A path that should be a run directory (or a scenario in one) is not."""


@dataclass(frozen=True)
class RunDir:
    path: Path
    document: dict[str, Any]     # results.json

    @property
    def results(self) -> list[dict[str, Any]]:
        return self.document["results"]  # type: ignore[no-any-return]

    def config(self, known_scenarios: Collection[str]) -> Config:
        """The run's resolved config (config.json), as it ran."""
        path = self.path / "config.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RunDirError(f"{path} cannot be read: {e}") from None
        source = data.pop("source", str(path)) if isinstance(data, dict) else str(path)
        return parse_config(data, source=source, known_scenarios=known_scenarios)

    @property
    def kernel_specs(self) -> list[str]:
        """The run's kernels in config order."""
        return [str(k) for k in self.document["run"]["config"]["kernels"]]


def load_run(path: Path) -> RunDir:
    results = path / "results.json"
    if not results.is_file():
        raise RunDirError(f"{path} is not a run directory: it has no results.json")
    try:
        document = json.loads(results.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{results} cannot be read: {e}") from None
    if not isinstance(document, dict) or document.get("schema") != RESULTS_SCHEMA:
        raise RunDirError(f"{results} is not a notifier-harness results file (schema "
                          f"{document.get('schema') if isinstance(document, dict) else '?'!r}, expected "
                          f"{RESULTS_SCHEMA!r})")
    return RunDir(path=path, document=document)
