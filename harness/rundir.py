"""Reading a finished (or half-finished) run directory back: its results and resolved config.

A run directory is input like any other: it may be half-written, edited by
hand, or not a run at all.  load_run checks every field compare, repro and
merge read, so each of them gets a RunDirError naming the file and the field,
never a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

from harness.config import Config, parse_config
from harness.errors import HarnessError
from harness.report import RESULTS_SCHEMA
from harness.verdict import STATUSES

# A results.json larger than this is not one the harness wrote for any config it accepts.
MAX_RESULTS_BYTES = 256 << 20


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
        data = _read_json(path)
        source = data.pop("source", str(path)) if isinstance(data, dict) else str(path)
        return parse_config(data, source=source, known_scenarios=known_scenarios)

    @property
    def kernel_specs(self) -> list[str]:
        """The run's kernels in config order."""
        return [str(k) for k in self.document["run"]["config"]["kernels"]]

    def slot_of(self, row: dict[str, Any]) -> tuple[int, str]:
        """A row's (kernel index in the config, scenario directory): the key rows are paired and
        shards are cut by.  A kernel not in the config sorts last."""
        specs = self.kernel_specs
        index = specs.index(row["kernel_spec"]) if row["kernel_spec"] in specs else len(specs)
        return index, (row.get("artifacts") or row["scenario"]).rsplit("/", 1)[-1]

    def slot_durations(self) -> dict[tuple[int, str], float]:
        """How long each slot took: what balances the shards of a later run (--durations)."""
        return {self.slot_of(r): float(r["duration_s"]) for r in self.results
                if isinstance(r.get("duration_s"), (int, float)) and not isinstance(r.get("duration_s"), bool)}


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_RESULTS_BYTES:
            raise RunDirError(f"{path} is larger than {MAX_RESULTS_BYTES >> 20} MiB: not a results file")
        return json.loads(path.read_bytes().decode())
    except OSError as e:
        raise RunDirError(f"{path} cannot be read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise RunDirError(f"{path} is not UTF-8 text: not a results file") from None
    except (ValueError, RecursionError) as e:
        raise RunDirError(f"{path} is not valid JSON: {str(e)[:200]}") from None


def _require(ok: bool, path: Path, what: str) -> None:
    if not ok:
        raise RunDirError(f"{path}: {what}")


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_document(document: Any, path: Path) -> None:
    """Every field the readers of a run use, with its type."""
    _require(isinstance(document, dict), path, "not a JSON object")
    schema = document.get("schema")
    _require(schema == RESULTS_SCHEMA, path, f"not a notifier-harness results file (schema {str(schema)[:80]!r}, "
                                             f"expected {RESULTS_SCHEMA!r})")
    run = document.get("run")
    _require(isinstance(run, dict), path, "'run' is missing or not an object")
    config = run.get("config")
    _require(isinstance(config, dict) and _is_strings(config.get("kernels")), path,
             "'run.config.kernels' is missing or not a list of kernel specs")
    kernels = run.get("kernels", [])
    _require(isinstance(kernels, list) and all(isinstance(k, dict) and isinstance(k.get("spec"), str)
                                               and isinstance(k.get("release", ""), str) for k in kernels),
             path, "'run.kernels' is not a list of objects with a 'spec'")
    results = document.get("results")
    _require(isinstance(results, list), path, "'results' is missing or not a list")
    for i, row in enumerate(results):
        where = f"results[{i}]"
        _require(isinstance(row, dict), path, f"{where} is not an object")
        for key in ("kernel", "kernel_spec", "scenario"):
            _require(isinstance(row.get(key), str), path, f"{where}.{key} is missing or not a string")
        _require(row.get("verdict") in STATUSES, path,
                 f"{where}.verdict is {str(row.get('verdict'))[:40]!r}, not one of {', '.join(STATUSES)}")
        for key in ("findings", "notes", "reports"):
            _require(_is_strings(row.get(key, [])), path, f"{where}.{key} is not a list of strings")
        _require(isinstance(row.get("artifacts", ""), str), path, f"{where}.artifacts is not a string")
        sites = row.get("callsites", {})
        _require(isinstance(sites, dict) and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                                 for k, v in sites.items()),
                 path, f"{where}.callsites is not an object of counts")
        _require(_is_strings(row.get("callsites_unresolved", [])), path,
                 f"{where}.callsites_unresolved is not a list of strings")


def load_run(path: Path) -> RunDir:
    results = path / "results.json"
    if not results.is_file():
        raise RunDirError(f"{path} is not a run directory: it has no results.json")
    document = _read_json(results)
    _check_document(document, results)
    return RunDir(path=path, document=document)
