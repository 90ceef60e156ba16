"""Run a plan: for each kernel, resolve it, build its initramfs, boot it once,
run its scenarios in order, and record a Result for every (kernel, scenario)
pair whatever happens, so a broken kernel costs its own rows and no more."""

from __future__ import annotations

import json
import platform
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from harness import __version__
from harness.artifacts.cache import cache_root
from harness.artifacts.kernel import Kernel
from harness.artifacts.prepare import prepare
from harness.config import Config, ScenarioConfig
from harness.errors import HarnessError
from harness.guest import Guest
from harness.kernelspec import KernelSpec
from harness.model.versions import features_for
from harness.report import write_reports
from harness.scenarios import SCENARIOS, ScenarioContext
from harness.vm.accel import AccelChoice, choose_accel, probe_host
from harness.vm.machine import Machine
from harness.verdict import Result, Verdict

Log = Callable[[str], None]


def new_run_dir(base: Path = Path("runs"), prefix: str = "") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return base / f"{prefix}{stamp}-{secrets.token_hex(3)}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


@dataclass
class Run:
    config: Config
    out_dir: Path
    log: Log = print
    qemu: str = "qemu-system-x86_64"

    def __post_init__(self) -> None:
        self.results: list[Result] = []
        self.kernels: list[dict[str, Any]] = []
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def meta(self) -> dict[str, Any]:
        return {"harness_version": __version__, "started": self.started, "host": platform.node(),
                "config": self.config.to_dict(), "seed": self.config.seed, "kernels": self.kernels,
                "out_dir": str(self.out_dir)}

    def _record(self, result: Result) -> None:
        self.results.append(result)
        write_reports(self.out_dir, self.results, self.meta())
        first = f"  {result.findings[0]}" if result.findings else ""
        self.log(f"{result.verdict.upper():5} {result.kernel} {result.scenario} "
                 f"({result.duration_s:.1f}s, {result.accel}){first}")

    def execute(self) -> list[Result]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        accel = choose_accel(self.config.machine.accel, probe_host())
        self.log(f"accel: {accel.accel} ({accel.reason})")
        self.log(f"run directory: {self.out_dir}")
        write_reports(self.out_dir, self.results, self.meta())
        for spec in self.config.kernels:
            self._run_kernel(spec, accel)
        return self.results

    def _error_rows(self, label: str, spec: KernelSpec, accel: str, scenarios: list[ScenarioConfig],
                    message: str) -> None:
        for sc in scenarios:
            self._record(Result(kernel=label, kernel_spec=spec.text, accel=accel, scenario=sc.name,
                                verdict="error", findings=(message,), duration_s=0.0, seed=self.config.seed))

    def _run_kernel(self, spec: KernelSpec, accel: AccelChoice) -> None:
        pending = list(self.config.scenarios)
        info: dict[str, Any] = {"spec": spec.text}
        self.kernels.append(info)
        try:
            prepared = prepare(spec, cache_root())
        except HarnessError as e:
            self.log(f"kernel {spec.text}: {e}")
            self._error_rows(spec.text, spec, accel.accel, pending, f"kernel {spec.text}: {e}")
            return
        kernel, initramfs = prepared.kernel, prepared.initramfs
        info.update(release=kernel.release, image=str(kernel.image),
                    initramfs=str(initramfs.path), initramfs_digest=initramfs.digest)
        self.log(f"kernel {spec.text}: {kernel.release}; initramfs "
                 f"{'built' if initramfs.built else 'cached'} {initramfs.digest[:12]}")
        kdir = self.out_dir / _safe(kernel.release)
        machine = Machine(prepared.image, self.config.machine, accel, kdir, qemu=self.qemu, log=self.log)
        try:
            with machine:
                info.update(accel=machine.accel_used, accel_reason=machine.accel_reason,
                            boot_s=round(machine.boot_s, 3), qemu_argv=str(kdir / "qemu-argv.json"),
                            console_log=str(kdir / "console.log"))
                self.log(f"booted {kernel.release} in {machine.boot_s:.2f}s ({machine.accel_used})")
                guest = Guest(ssh=machine.ssh, release=kernel.release, accel=machine.accel_used)
                while pending:
                    sc = pending.pop(0)
                    self._record(self._run_scenario(sc, kernel, machine, guest, kdir))
        except HarnessError as e:
            self.log(f"kernel {kernel.release}: {e}")
            self._error_rows(kernel.release, spec, machine.accel_used, pending, str(e))
        info["shutdown"] = machine.shutdown_how
        write_reports(self.out_dir, self.results, self.meta())

    def _run_scenario(self, sc: ScenarioConfig, kernel: Kernel, machine: Machine, guest: Guest,
                      kdir: Path) -> Result:
        sdir = kdir / _safe(sc.name)
        sdir.mkdir(parents=True, exist_ok=True)
        console = machine.console
        assert console is not None
        ctx = ScenarioContext(guest=guest, features=features_for(kernel.version), config=sc,
                              seed=self.config.seed, out_dir=sdir,
                              console_tail=console.tail, init_failures=tuple(console.init_failures))
        start = time.monotonic()
        guest.start_budget(sc.timeout_s)
        try:
            verdict = SCENARIOS[sc.name].run(ctx)
        except HarnessError as e:
            verdict = Verdict("error", (str(e),))
        return Result(kernel=kernel.release, kernel_spec=kernel.spec.text, accel=machine.accel_used,
                      scenario=sc.name, verdict=verdict.status, findings=verdict.findings,
                      duration_s=time.monotonic() - start, seed=self.config.seed, notes=verdict.notes)
