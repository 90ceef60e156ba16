"""Run a plan: for each kernel, resolve it, build its initramfs, boot it once,
run its scenarios in order, and record a Result for every (kernel, scenario)
pair whatever happens, so a broken kernel costs its own rows and no more."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import secrets
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from harness import __version__
from harness.artifacts.cache import cache_root
from harness.artifacts.kernel import Kernel
from harness.artifacts.prepare import Prepared, prepare
from harness.config import Config, ScenarioConfig
from harness import coverage
from harness.console_reports import classify
from harness.coverage import Hits
from harness.debuglog import kept_in
from harness.errors import CommandTimeout, GuestError, HarnessError, MachineLost, OutputError
from harness.guest import Guest
from harness.guest_data import parse_int, quote
from harness.kconfig import KernelConfig, parse_kconfig, skip_reason
from harness.health import judge_health, reboot_reason
from harness.kernelspec import KernelSpec
from harness.model.versions import extrapolated, features_for, verified_label
from harness.printable import printable
from harness.report import write_reports
from harness.scenarios import SCENARIOS, ScenarioContext
from harness.scenarios.base import MARK_PREFIX
from harness.shard import Shard, Slot, split
from harness.vm.accel import AccelChoice, choose_accel, probe_host
from harness.vm.console import LOG_LIMIT
from harness.vm.machine import Machine
from harness.verdict import Result, Verdict

Log = Callable[[str], None]
logger = logging.getLogger(__name__)
# A guest that cannot run `true` in this long after its scenario ran out of time is hung.
HANG_PROBE_S = 10.0


def together(tasks: list[Callable[[], Any]], stops: list[Callable[[], None]], jobs: int) -> list[Any]:
    """Run `tasks` in up to `jobs` threads, their results in order.  Whatever stops one (Ctrl-C in the
    main thread, a full disk in a task) calls every `stops` and is raised once the tasks have unwound."""
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="kernel") as pool:
        futures = [pool.submit(task) for task in tasks]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for stop in stops:
                stop()
            raise


def default_jobs(kernels: int) -> int:
    """One machine per kernel, no more than the host's CPUs (a TCG guest keeps one busy)."""
    return max(1, min(kernels, os.cpu_count() or 1))


def host_kernel_config(kernel: Kernel) -> Optional[KernelConfig]:
    """The kernel's .config from its files, when it has one (a tree, Debian's boot/config-*, an image's
    DIR/build/.config or DIR/config)."""
    if kernel.config is None:
        return None
    try:
        text = kernel.config.read_text(errors="replace")
    except OSError:
        return None
    return parse_kconfig(text, str(kernel.config))


def guest_kernel_config(guest: Guest) -> Optional[KernelConfig]:
    """/proc/config.gz (CONFIG_IKCONFIG_PROC), for a kernel whose files carry no .config."""
    result = guest.run(["sh", "-c", "test -e /proc/config.gz && zcat /proc/config.gz"], timeout=30)
    return parse_kconfig(result.stdout, "/proc/config.gz") if result.ok else None


def start_coverage(guest: Guest, kconfig: Optional[KernelConfig]) -> Optional[str]:
    """Place the call-site kprobes for this boot (harness/coverage.py); why coverage is off, or None."""
    if kconfig is not None and not kconfig.enabled("CONFIG_KPROBE_EVENTS"):
        return "off: CONFIG_KPROBE_EVENTS is not set"
    result = guest.run(["sh", "-c", coverage.SETUP_SCRIPT], timeout=30)
    if not result.ok:
        return f"off: placing the call-site kprobes failed: {(result.stderr or result.stdout).strip()[-200:]}"
    return None


def collect_coverage(guest: Guest, version: tuple[int, int], notes: list[str]) -> Optional[Hits]:
    """The call sites since the last collection (the scenario's, collected after its end mark)."""
    result = guest.run(["sh", "-c", coverage.COLLECT_SCRIPT], timeout=60)
    if not result.ok:
        notes.append(f"call-site coverage: collecting failed: {(result.stderr or result.stdout).strip()[-200:]}")
        return None
    parsed = coverage.parse_collect(result.stdout)
    if not parsed.complete:
        notes.append(f"call-site coverage incomplete: {parsed.overruns} stacks lost to a full buffer, "
                     f"{parsed.skipped} lines not understood, {parsed.unpaired} stacks without their event")
    return coverage.sites_hit(parsed.stacks, version)


def new_run_dir(base: Path = Path("runs"), prefix: str = "") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return base / f"{prefix}{stamp}-{secrets.token_hex(3)}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def release_dir(release: str) -> str:
    """A kernel's directory name in a run."""
    return _safe(release)


def scenario_slots(config: Config) -> list[tuple[ScenarioConfig, str]]:
    """Each configured scenario with its own directory name: the scenario's name, then name.2,
    name.3 for repeats, so a config may run one scenario with several settings."""
    seen: dict[str, int] = {}
    slots = []
    for sc in config.scenarios:
        seen[sc.name] = seen.get(sc.name, 0) + 1
        slots.append((sc, _safe(sc.name) + (f".{seen[sc.name]}" if seen[sc.name] > 1 else "")))
    return slots


# What a run keeps of each scenario's console slice for junit.xml, rewritten after every
# scenario: CI viewers choke on megabytes.
JUNIT_CONSOLE_BYTES = 64 * 1024


@dataclass
class Run:
    config: Config
    out_dir: Path
    log: Log = print
    qemu: str = "qemu-system-x86_64"
    # Shown while a scenario runs (a terminal's live line); the result line replaces it.
    progress: Log = lambda line: None
    # Called with the machine after its last scenario, before it is shut down (repro --shell).
    on_done: Optional[Callable[[Machine], None]] = None
    # How a spec becomes bootable and how a machine is made: seams for tests with fake machines.
    prepare_kernel: Callable[[KernelSpec, Path], Prepared] = prepare
    machine_factory: Callable[..., Machine] = Machine
    # Kernels booted and run at once, each on its own machine (a kernel's scenarios stay on one
    # boot, in order); results are the same, in the same order, as one at a time.
    jobs: int = 1
    # Only these slots of the run (a shard of it, harness/shard.py), or all of them.
    shard: Optional[Shard] = None
    durations: Optional[Mapping[Slot, float]] = None

    def __post_init__(self) -> None:
        self.consoles: dict[str, str] = {}    # artifacts -> the tail of the scenario's console slice
        self.kernels: list[dict[str, Any]] = [{"spec": spec.text, "boots": 0} for spec in self.config.kernels]
        self._rows: list[list[Result]] = [[] for _ in self.config.kernels]
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._machines: set[Machine] = set()
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        every = [(i, dirname) for i in range(len(self.config.kernels)) for _, dirname in scenario_slots(self.config)]
        self._slots = set(split(every, self.shard, self.durations)) if self.shard else set(every)

    @property
    def results(self) -> list[Result]:
        """Every row so far, kernel by kernel in config order, each kernel's in scenario order."""
        with self._lock:
            return [r for rows in self._rows for r in rows]

    def meta(self) -> dict[str, Any]:
        meta = {"harness_version": __version__, "started": self.started, "host": platform.node(),
                "config": self.config.to_dict(), "seed": self.config.seed, "kernels": self.kernels,
                "out_dir": str(self.out_dir)}
        if self.shard:
            meta["shard"] = self.shard.label
        return meta

    def _write_reports(self) -> None:
        with self._lock:
            try:
                write_reports(self.out_dir, self.results, self.meta(), self.consoles)
            except OSError as e:
                raise OutputError(f"cannot write the results into {self.out_dir}: {e.strerror}; "
                                  f"the run stops") from None

    def _record(self, index: int, result: Result) -> None:
        if self._stopping.is_set():
            return      # an interrupted run's last scenario was cut short by the stop, not the kernel
        result = result.printable()
        with self._lock:
            self._rows[index].append(result)
            self._write_reports()
        first = f"  {result.findings[0].splitlines()[0]}" if result.findings else ""
        self.log(f"{result.verdict.upper():5} {result.kernel} {result.scenario} "
                 f"({result.duration_s:.1f}s, {result.accel}){first}")
        if result.verdict in ("fail", "error") and result.artifacts:
            self.log(f"      repro: notifier-harness repro {self.out_dir / result.artifacts}")

    def execute(self) -> list[Result]:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        except OSError as e:
            raise OutputError(f"cannot write into the run directory {self.out_dir}: {e.strerror}") from None
        with kept_in(self.out_dir / "harness.log"):
            return self._execute()

    def _execute(self) -> list[Result]:
        accel = choose_accel(self.config.machine.accel, probe_host())
        self.log(f"accel: {accel.accel} ({accel.reason})")
        self.log(f"run directory: {self.out_dir}")
        self._write_reports()
        work = [(i, spec) for i, spec in enumerate(self.config.kernels)
                if any(index == i for index, _ in self._slots)]
        if self.jobs <= 1 or len(work) <= 1:
            for i, spec in work:
                self._run_kernel(i, spec, accel)
        else:
            self._run_parallel(work, accel)
        return self.results

    def _run_parallel(self, work: list[tuple[int, KernelSpec]], accel: AccelChoice) -> None:
        """Each kernel in a thread of its own."""
        together([partial(self._run_kernel, i, spec, accel) for i, spec in work], [self.stop], self.jobs)

    def stop(self) -> None:
        """From another thread: no further scenario or boot, and the running QEMUs killed, so the
        threads using them unwind at once and shut their machines down."""
        self._stopping.set()
        with self._lock:
            machines = list(self._machines)
        for machine in machines:
            machine.kill()

    def _error_rows(self, index: int, label: str, spec: KernelSpec, accel: str,
                    slots: list[tuple[ScenarioConfig, str]], message: str) -> None:
        """Rows for scenarios that never ran; each gets its directory (with the error), so the repro
        hint printed for it names a path that exists."""
        for sc, dirname in slots:
            sdir = self.out_dir / release_dir(label) / dirname
            try:
                sdir.mkdir(parents=True, exist_ok=True)
                (sdir / "error.txt").write_text(printable(message) + "\n")
            except OSError as e:
                raise OutputError(f"cannot write into {sdir}: {e.strerror}; the run stops") from None
            self._record(index, Result(kernel=label, kernel_spec=spec.text, accel=accel, scenario=sc.name,
                                       verdict="error", findings=(message,), duration_s=0.0, seed=self.config.seed,
                                       artifacts=str(sdir.relative_to(self.out_dir))))

    def _run_kernel(self, index: int, spec: KernelSpec, accel: AccelChoice) -> None:
        pending = [(sc, dirname) for sc, dirname in scenario_slots(self.config) if (index, dirname) in self._slots]
        info = self.kernels[index]
        try:
            prepared = self.prepare_kernel(spec, cache_root())
        except HarnessError as e:
            self.log(f"kernel {spec.text}: {e}")
            self._error_rows(index, spec.text, spec, accel.accel, pending, f"kernel {spec.text}: {e}")
            return
        kernel, initramfs = prepared.kernel, prepared.initramfs
        info.update(release=kernel.release, image=str(kernel.image),
                    initramfs=str(initramfs.path), initramfs_digest=initramfs.digest)
        self.log(f"kernel {spec.text}: {kernel.release}; initramfs "
                 f"{'built' if initramfs.built else 'cached'} {initramfs.digest[:12]}")
        kdir = self.out_dir / release_dir(kernel.release)
        kconfig = host_kernel_config(kernel)
        # One boot serves every scenario; a scenario that loses the machine (panic, hang, QEMU
        # gone, SSH gone) or leaves the kernel unreliable (an Oops, a lockup: harness.health) costs
        # its own row and a fresh boot for the ones after it.
        while pending and not self._stopping.is_set():
            machine = self.machine_factory(prepared.image, self.config.machine, accel, kdir, qemu=self.qemu,
                                           log=self.log)
            info["boots"] += 1
            with self._lock:
                self._machines.add(machine)
            try:
                with machine:
                    info.update(accel=machine.accel_used, accel_reason=machine.accel_reason,
                                boot_s=round(machine.boot_s, 3), qemu_argv=str(kdir / "qemu-argv.json"),
                                console_log=str(kdir / "console.log"))
                    self.log(f"booted {kernel.release} in {machine.boot_s:.2f}s ({machine.accel_used})"
                             + (f", boot {info['boots']}" if info["boots"] > 1 else ""))
                    guest = Guest(ssh=machine.ssh, release=kernel.release, accel=machine.accel_used,
                                  memory_mib=self.config.machine.memory_mib, watch=machine.check_health)
                    if kconfig is None:
                        kconfig = guest_kernel_config(guest)
                    info["kernel_config"] = kconfig.source if kconfig else "unknown (no .config, no /proc/config.gz)"
                    coverage_off = start_coverage(guest, kconfig)
                    info["callsite_coverage"] = coverage_off or "on"
                    while pending and not self._stopping.is_set():
                        sc, dirname = pending.pop(0)
                        missing = kconfig.missing(SCENARIOS[sc.name].needs) if kconfig else []
                        if missing:
                            self._record(index, self._skipped(sc, kernel, machine.accel_used, kdir / dirname,
                                                              skip_reason(missing)))
                            continue
                        result, after = self._run_scenario(sc, kernel, machine, guest, kdir / dirname, kconfig,
                                                           coverage=coverage_off is None)
                        self._record(index, result)
                        # An unreliable kernel after the last scenario still serves `repro --shell`.
                        if after == "lost" or (after == "reboot" and pending):
                            machine.shutdown(soft=False)
                            break
                    else:
                        if self.on_done is not None:
                            self.on_done(machine)
            except OutputError:
                raise
            except HarnessError as e:
                self.log(f"kernel {kernel.release}: {e}")
                self._error_rows(index, kernel.release, spec, machine.accel_used, pending, str(e))
                pending = []
            finally:
                with self._lock:
                    self._machines.discard(machine)
            info["shutdown"] = machine.shutdown_how
        self._write_reports()

    def _skipped(self, sc: ScenarioConfig, kernel: Kernel, accel: str, sdir: Path, reason: str) -> Result:
        """A scenario the kernel's configuration rules out: skipped without touching the guest."""
        return Result(kernel=kernel.release, kernel_spec=kernel.spec.text, accel=accel, scenario=sc.name,
                      verdict="skip", findings=(reason,), duration_s=0.0, seed=self.config.seed,
                      artifacts=str(sdir.relative_to(self.out_dir)))

    def _run_scenario(self, sc: ScenarioConfig, kernel: Kernel, machine: Machine, guest: Guest,
                      sdir: Path, kconfig: Optional[KernelConfig] = None,
                      coverage: bool = False) -> tuple[Result, str]:
        """The scenario's Result, and what becomes of the guest: "keep", "reboot" (its kernel is no
        longer one to test on) or "lost"."""
        try:
            sdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot write into {sdir}: {e.strerror}; the run stops") from None
        console = machine.console
        assert console is not None
        ctx = ScenarioContext(guest=guest, features=features_for(kernel.version), config=sc,
                              seed=self.config.seed, out_dir=sdir,
                              console_tail=console.tail, init_failures=tuple(console.init_failures),
                              host_fault=machine.inject_host_fault, kconfig=kconfig)
        self.progress(f"{kernel.release} {sc.name}")
        logger.debug("scenario %s (%s) on %s: begin, time limit %.0f s", sc.name, sdir.name, kernel.release, sc.timeout_s)
        start = time.monotonic()
        offset = machine.console_offset()
        dropped_before = console.dropped
        lost: Optional[MachineLost] = None
        verdict: Optional[Verdict] = None
        taint_before = taint_after = 0
        hits: Optional[Hits] = None
        notes: list[str] = []
        try:
            guest.notes.clear()
            taint_before = self._mark(guest, f"begin {sc.name}")
            guest.start_budget(sc.timeout_s)
            try:
                verdict = SCENARIOS[sc.name].run(ctx)
            finally:
                guest.deadline = None
            # Host-side work (the model) counts against the scenario's time limit too.
            spent = time.monotonic() - start
            if spent > sc.timeout_s + HANG_PROBE_S:
                verdict = Verdict("error", (f"scenario time limit of {sc.timeout_s:.0f} s exceeded: it took "
                                            f"{spent:.0f} s, the last of it on the host",), verdict.notes)
            taint_after = self._mark(guest, f"end {sc.name}")
            if coverage:
                hits = collect_coverage(guest, kernel.version, notes)
        except OutputError:
            raise
        except MachineLost as e:
            lost = machine.account_for(e)
        except CommandTimeout as e:
            lost = self._hang_or_slow(e, machine, sdir)
            if lost is None:
                verdict = Verdict("error", (str(e),))
        except HarnessError as e:
            verdict = Verdict("error", (str(e),))
        except OSError as e:
            # The scenario's own evidence files: a full disk is the run's problem, not the kernel's.
            raise OutputError(f"cannot write into {sdir}: {e.strerror}; the run stops") from None
        except Exception as e:     # noqa: BLE001 - a harness bug costs its row, not the run
            (sdir / "traceback.txt").write_text(traceback.format_exc())
            verdict = Verdict("error", (f"harness bug: {type(e).__name__}: {quote(e, 300)} "
                                        f"(traceback in {(sdir / 'traceback.txt').relative_to(self.out_dir)})",))
        if lost is not None and lost.kind == "panic":
            time.sleep(0.5)    # the panic's trace is still arriving on the console
        machine.check_output()
        text = machine.read_console(offset)
        reports = classify(text)
        try:
            (sdir / "console.log").write_text(text)
            if reports:
                (sdir / "reports.txt").write_text("\n\n".join(f"[{r.kind}] {r.title}\n{r.text}"
                                                               for r in reports) + "\n")
        except OSError as e:
            raise OutputError(f"cannot write into {sdir}: {e.strerror}; the run stops") from None
        artifacts = str(sdir.relative_to(self.out_dir))
        self.consoles[artifacts] = text[-JUNIT_CONSOLE_BYTES:]
        verdict = judge_health(verdict, lost, reports, taint_before, taint_after)
        notes = [*verdict.notes, *notes, *guest.notes]
        if sc.probe_corrupt != "off":
            notes.append(f"the probe ran with corrupt={sc.probe_corrupt}: findings are expected")
        if not ctx.features.verified:
            notes.append(f"kernel {ctx.features.label} is outside the versions the model was read from "
                         f"({verified_label()}); extrapolated: " + "; ".join(extrapolated(ctx.features)))
        if console.dropped > dropped_before:
            notes.append(f"console flood: {console.dropped - dropped_before} bytes of console output were "
                         f"not kept (console.log keeps {LOG_LIMIT >> 20} MiB per boot)")
        logger.debug("scenario %s: %s, %d kernel report(s), taint %d -> %d", sc.name, verdict.status, len(reports),
                  taint_before, taint_after)
        why = reboot_reason(reports, taint_after & ~taint_before)
        after = "lost" if lost is not None else "reboot" if why else "keep"
        if after == "reboot":
            notes.append(f"the kernel is not one to test on after this scenario ({why}): the guest is rebooted "
                         f"before the next one")
        return Result(kernel=kernel.release, kernel_spec=kernel.spec.text, accel=machine.accel_used,
                      scenario=sc.name, verdict=verdict.status, findings=verdict.findings,
                      duration_s=time.monotonic() - start, seed=self.config.seed, notes=tuple(notes),
                      reports=tuple(r.title for r in reports), artifacts=artifacts,
                      callsites=hits.sites if hits else {},
                      callsites_unresolved=tuple(hits.as_result_fields()["callsites_unresolved"]) if hits else ()), after

    @staticmethod
    def _mark(guest: Guest, what: str) -> int:
        """Write `MARK_PREFIX WHAT` into the kernel log and read the taint, in one round trip."""
        out = guest.check(["sh", "-c", 'echo "$1 $2" > /dev/kmsg && cat /proc/sys/kernel/tainted',
                           "mark", MARK_PREFIX, what], timeout=10)
        return parse_int(out, "/proc/sys/kernel/tainted", lo=0)

    def _hang_or_slow(self, timeout: CommandTimeout, machine: Machine, sdir: Path) -> Optional[MachineLost]:
        """A scenario out of time: a hang if the guest no longer answers a trivial command (then the
        evidence is saved and the machine is lost), else just a slow scenario (None)."""
        try:
            machine.ssh.run("true", timeout=HANG_PROBE_S, watch=machine.check_health)
            return None
        except MachineLost as e:
            account = machine.account_for(e)
            if account.kind != "ssh-lost":
                return account      # it panicked or QEMU went away meanwhile: that is the story
        except GuestError:
            pass
        evidence = machine.hang_evidence()
        (sdir / "hang.txt").write_text(evidence + "\n")
        first = evidence.splitlines()[0] if evidence else ""
        return MachineLost("hang", f"{timeout}; then no answer over SSH within {HANG_PROBE_S:.0f} s "
                                   f"({first}); registers and console tail in {(sdir / 'hang.txt').relative_to(self.out_dir)}")
