"""`notifier-harness merge`: the shards of one run (run --shard K/N) joined into one run directory
that compare, repro, coverage and validate read like any other.

Shards must come from the same config and seed, with one of each part 1..N: a merge that lacked
a part would look like a run that never ran those scenarios.  Rows are put back in the run's
order (kernel by kernel, scenarios in config order); each scenario's directory comes from the
one shard that ran it; a kernel's own files are joined where a cut split its scenarios (its
console.log, every boot of it, in shard order).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

from harness.errors import ConfigError, OutputError
from harness.report import write_reports
from harness.rundir import RunDir, RunDirError
from harness.runner import JUNIT_CONSOLE_BYTES, scenario_slots
from harness.scenarios import SCENARIOS
from harness.shard import parse_shard
from harness.verdict import Result

# Files of a kernel's directory that every boot appends to: joined in shard order.
JOINED = ("console.log", "qemu-stderr.log")
RUN_FILES = ("results.json", "junit.xml", "config.json", "harness.log")


def _same_run(shards: Sequence[RunDir]) -> None:
    def identity(run: RunDir) -> dict[str, Any]:
        config = dict(run.document["run"]["config"])
        config.pop("source", None)
        return config

    labels = []
    for run in shards:
        shard = run.document["run"].get("shard")
        if not isinstance(shard, str):
            raise RunDirError(f"{run.path} is not a shard (its results.json has no run.shard; run --shard K/N)")
        try:
            labels.append(parse_shard(shard))
        except ConfigError:
            raise RunDirError(f"{run.path}: run.shard {shard[:20]!r} is not K/N") from None
        if identity(run) != identity(shards[0]):
            raise RunDirError(f"{run.path} and {shards[0].path} ran different configs or seeds: they are not "
                              f"shards of one run")
    counts = {s.count for s in labels}
    if len(counts) != 1:
        raise RunDirError(f"the shards were cut into different numbers of parts: {sorted(s.label for s in labels)}")
    count = counts.pop()
    seen = sorted(s.index for s in labels)
    if seen != list(range(1, count + 1)):
        missing = sorted(set(range(1, count + 1)) - set(seen))
        twice = sorted({i for i in seen if seen.count(i) > 1})
        raise RunDirError(f"shards of {count}: " + "; ".join(
            ([f"missing {', '.join(f'{i}/{count}' for i in missing)}"] if missing else []) +
            ([f"given twice: {', '.join(f'{i}/{count}' for i in twice)}"] if twice else [])))


def _copy_tree(src: Path, dst: Path) -> None:
    """A shard's kernel and scenario directories into the merged run; JOINED files appended."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if len(rel.parts) == 1 and rel.name in RUN_FILES or path.is_dir():
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and rel.name in JOINED:
            with open(target, "ab") as out, open(path, "rb") as more:
                shutil.copyfileobj(more, out)
        elif not target.exists():
            shutil.copy2(path, target)


def _kernels(shards: Sequence[RunDir]) -> list[dict[str, Any]]:
    """Per kernel of the config: the first shard's facts about it that booted it, boots summed."""
    merged: list[dict[str, Any]] = []
    for spec in shards[0].kernel_specs:
        infos = [k for run in shards for k in run.document["run"].get("kernels", []) if k.get("spec") == spec]
        booted = [k for k in infos if k.get("boots")]
        info = dict(booted[0] if booted else infos[0] if infos else {"spec": spec})
        info["boots"] = sum(int(k.get("boots", 0)) for k in infos)
        merged.append(info)
    return merged


def merge_runs(shards: Sequence[RunDir], out: Path) -> int:
    """Write the merged run into `out` (which must not exist yet); the number of rows."""
    _same_run(shards)
    if out.exists():
        raise ConfigError(f"--out {out}: exists; the merged run needs a new directory")
    config = shards[0].config(known_scenarios=frozenset(SCENARIOS))
    order = {(i, dirname): n for i in range(len(config.kernels))
             for n, (_, dirname) in enumerate(scenario_slots(config))}
    rows = sorted(((run.slot_of(r), r) for run in shards for r in run.results),
                  key=lambda item: (item[0][0], order.get(item[0], len(order))))
    try:
        out.mkdir(parents=True)
        for run in shards:
            _copy_tree(run.path, out)
        (out / "config.json").write_text((shards[0].path / "config.json").read_text())
        results = [Result(**{**r, "findings": tuple(r["findings"]), "notes": tuple(r.get("notes", ())),
                             "reports": tuple(r.get("reports", ())), "callsites": dict(r.get("callsites", {})),
                             "callsites_unresolved": tuple(r.get("callsites_unresolved", ()))})
                   for _, r in rows]
        consoles = {r.artifacts: _tail(out / r.artifacts / "console.log") for r in results if r.artifacts}
        run_meta = dict(shards[0].document["run"])
        run_meta.pop("shard", None)
        run_meta.update(kernels=_kernels(shards), out_dir=str(out),
                        started=min(str(run.document["run"].get("started", "")) for run in shards),
                        merged_from=[f"{run.document['run']['shard']} {run.path}" for run in shards])
        write_reports(out, results, run_meta, consoles)
    except OSError as e:
        raise OutputError(f"cannot write the merged run into {out}: {e.strerror}") from None
    except TypeError as e:
        raise RunDirError(f"a row of the shards cannot be read back: {e}") from None
    return len(results)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - JUNIT_CONSOLE_BYTES))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
