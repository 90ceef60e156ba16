"""Guest tests boot real kernels under QEMU.  Kernels and initramfs images are
resolved once per session (downloaded into the cache the first time)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from harness.artifacts.cache import cache_root
from harness.artifacts.prepare import Prepared, prepare
from harness.cli import main
from harness.config import MachineConfig
from harness.kernelspec import parse_kernel_spec
from harness.vm.accel import AccelChoice

SERIES = ("6.1", "6.12")
TCG = AccelChoice("tcg", "guest tests run under TCG", watchdog=False)


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/guest/" in str(item.fspath):
            item.add_marker(pytest.mark.guest)


@pytest.fixture(scope="session")
def kernels() -> dict[str, Prepared]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed; `make test` installs it (qemu-system-x86)")
    cache = cache_root()
    return {series: prepare(parse_kernel_spec(f"debian:{series}"), cache) for series in SERIES}


@pytest.fixture
def machine_config() -> MachineConfig:
    return MachineConfig(cpus=2, memory_mib=1024, accel="tcg", boot_timeout_s=120)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes, but reaped is what we want.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline_of(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def qemu_running(argv: list[str]) -> list[int]:
    """Pids of live processes whose command line is exactly this QEMU argv."""
    return [pid for pid in pids() if cmdline_of(pid) == argv and pid_alive(pid)]


def run_matrix(out: Path, *scenarios: str) -> tuple[int, str]:
    """`run -c configs/matrix.yaml` for `scenarios` on 6.1 and 6.12 under TCG: its exit code and what
    it printed (captured here, so a module-scoped fixture can share one run among its tests)."""
    argv = ["run", "-c", "configs/matrix.yaml", "--accel", "tcg", "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(argv + [arg for name in scenarios for arg in ("--scenario", name)])
    return code, printed.getvalue()


def run_matrix_passing(out: Path, capsys, *scenarios: str) -> dict[tuple[str, str], str]:
    """`run -c configs/matrix.yaml` for `scenarios` on 6.1 and 6.12 under TCG; every row must pass.
    Each row's notes, joined, keyed by (minor version, scenario): ("1", "ksm"), ("12", "ksm")."""
    argv = ["run", "-c", "configs/matrix.yaml", "--accel", "tcg", "--out", str(out)]
    code = main(argv + [arg for name in scenarios for arg in ("--scenario", name)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = json.loads((out / "results.json").read_text())["results"]
    assert len(rows) == 2 * len(scenarios) and {r["verdict"] for r in rows} == {"pass"}
    return {(r["kernel"].split(".")[1], r["scenario"]): " ".join(r["notes"]) for r in rows}
