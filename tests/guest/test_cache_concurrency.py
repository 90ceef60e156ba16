"""Two runs started at once on one empty cache: one fetches and builds each
artifact, the other waits for it and uses it; both pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def entries(kind: Path) -> list[str]:
    return sorted(p.name for p in kind.iterdir() if not p.name.startswith("."))


def hidden(kind: Path) -> list[str]:
    """What is left beside the entries that is not a lock file: temp directories."""
    return sorted(p.name for p in kind.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def test_two_runs_on_one_empty_cache(tmp_path):
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed; `make test` installs it (qemu-system-x86)")
    cache = tmp_path / "cache"
    env = {**os.environ, "NOTIFIER_HARNESS_CACHE": str(cache)}
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--kernel", "debian:6.1",
                               "--scenario", "smoke", "--accel", "tcg", "--out", str(tmp_path / f"run{i}")],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (1, 2)]
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    print(f"two concurrent runs on an empty cache: {time.monotonic() - t0:.1f}s")
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    for i in (1, 2):
        rows = json.loads((tmp_path / f"run{i}" / "results.json").read_text())["results"]
        assert [(r["scenario"], r["verdict"]) for r in rows] == [("smoke", "pass")]
    # One entry per artifact: one kernel tree, one probe module, one set of workloads, one initramfs.
    release = entries(cache / "kernels" / "debian")
    assert len(release) == 1
    for kind in ("kernels/debian", "modules", "workloads", "initramfs"):
        assert len(entries(cache / kind)) == 1, (kind, entries(cache / kind))
        assert hidden(cache / kind) == [], (kind, hidden(cache / kind))
    assert entries(cache / "modules")[0].startswith(release[0] + "-")
    assert entries(cache / "initramfs")[0].startswith(release[0] + "-")
    # Exactly one of the two built the initramfs; the other found it.
    said = sorted("initramfs built" in out for out in outputs)
    assert said == [False, True], outputs
