"""`notifier-harness bench`: boot-to-SSH-ready of the harness against the raw QEMU floor.

The floor is the same QEMU argv (same kernel, accelerator, machine, memory)
with a trivial initramfs whose init powers off at once, timed from spawn to
exit.  The harness figure is Machine.boot(): from spawn until an SSH command
succeeded.  Both are medians of `repeats` boots, all in one run, kernels side
by side.  Nothing here asserts a target; it reports.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from harness.artifacts.cache import cache_root
from harness.artifacts.guest_build import MMOPS, NHCTL
from harness.artifacts.initramfs import build_floor_initramfs
from harness.artifacts.prepare import Prepared, prepare
from harness.config import Config
from harness.errors import MachineError
from harness.guest import Guest
from harness.guest_data import only, parse_json_lines
from harness.model.ops import parse_ops
from harness.runner import Run, new_run_dir
from harness.scenarios.probe import load_probe
from harness.verdict import Result
from harness.vm.accel import AccelChoice, choose_accel, probe_host
from harness.vm.machine import Machine, free_port
from harness.vm.qemu_args import QemuPlan, qemu_argv
from harness.vm.ssh import make_run_key


def _floor_once(plan: QemuPlan, timeout: float) -> float:
    argv = qemu_argv(plan)
    start = time.monotonic()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=timeout)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise MachineError(f"floor boot failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-300:]}")
    return elapsed


LOOP = 2000   # iterations of mmap 64 KiB, touch, munmap


def _loop_ns(guest: Guest, argv: list[str]) -> int:
    """The loop operation's time, from mmops's output (nhctl's counters line after it, if run under it)."""
    source = "bench: mmops"
    _, ops = parse_ops(parse_json_lines(guest.check(argv), source), source=source)
    loop = only([op for op in ops if op.kind == "loop"], "loop operation", source)
    return loop.t1 - loop.t0


def probe_overhead(guest: Guest, repeats: int) -> tuple[list[int], list[int]]:
    """The same munmap/fault loop without and with the probe attached, interleaved."""
    load_probe(guest)
    bare, probed = [], []
    for _ in range(repeats):
        bare.append(_loop_ns(guest, [MMOPS, "--no-probe", f"loop:{LOOP}"]))
        probed.append(_loop_ns(guest, [NHCTL, "run", "--events", "/tmp/bench-events.bin", "--",
                                       MMOPS, f"loop:{LOOP}"]))
    return bare, probed


def dirty_log_rates(config: Config, repeats: int, out: Path,
                    name: str = "dirty-log") -> dict[str, dict[str, list[float]]]:
    """The config's dirty-log scenario (or another that writes exploration.json: memslot) `repeats`
    times on each kernel, in one boot per kernel (the scenario makes a fresh VM per example; a boot
    adds nothing to the figure): operations checked per second and examples per minute, from each
    run's exploration.json.  Runs that did not pass are left out and counted in `not_passed` (by
    index)."""
    scenarios = [s for s in config.scenarios if s.name == name][:1]
    rates: dict[str, dict[str, list[float]]] = {}
    if not scenarios:
        return rates
    run_dir = out / name
    for r in Run(config=replace(config, scenarios=tuple(scenarios * repeats)), out_dir=run_dir,
                 log=lambda _m: None).execute():
        figures = rates.setdefault(r.kernel, {"ops_per_s": [], "examples_per_min": [], "not_passed": []})
        if r.verdict != "pass":
            figures["not_passed"].append(len(figures["ops_per_s"]) + len(figures["not_passed"]))  # run index
            continue
        e = json.loads((run_dir / r.artifacts / "exploration.json").read_text())
        figures["ops_per_s"].append(e["operations"] / e["seconds"])
        figures["examples_per_min"].append(e["examples"] * 60 / e["seconds"])
    return rates


# A guest that floods its console without a pause, then prints as much to its SSH channel.
FLOOD_MIB = 200
FLOOD = (f"yes 'notifier-harness bench: console flood, no pauses' | head -c {FLOOD_MIB << 20} > /dev/ttyS0; "
         f"head -c {FLOOD_MIB << 20} /dev/zero")


def flood_peak_rss_mib(prepared: Prepared, config: Config, accel: AccelChoice, out: Path,
                       log: Callable[[str], None]) -> tuple[float, float]:
    """(this process's peak RSS in MiB, seconds) after a guest flooded its console and a command's
    output with FLOOD_MIB MiB each: what a hostile guest costs the host.  Run first, so the peak is
    the flood's and not a later step's (QEMU's memory is its own process's, not counted)."""
    start = time.monotonic()
    with Machine(prepared.image, config.machine, accel, out, log=log) as m:
        result = m.ssh.run(FLOOD, timeout=600)
        if not result.ok:
            raise MachineError(f"the flood command failed ({result.exit_status}): {result.stderr[-300:]}")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.monotonic() - start


# Where a boot's time goes, from init's `NH-INIT: at STEP UPTIME` lines (guest/init/rcS) and the
# host's clock.
BOOT_STEPS = {
    "firmware": "QEMU start to kernel start (firmware, loading, decompression)",
    "init": "kernel start to init",
    "modules": "init to the network's modules loaded",
    "network": "modules to network up",
    "sshd": "network to sshd started",
    "ssh": "ready marker to SSH command answered",
}


def _prefixed(log: Callable[[str], None], prefix: str, line: str) -> None:
    log(prefix + line)


def boot_steps(uptimes: dict[str, float], ready_s: float, boot_s: float) -> dict[str, float]:
    """One boot's steps in seconds: the guest's uptimes at init's steps, and the host's clock around
    them (the ready marker comes right after sshd started)."""
    steps: dict[str, float] = {}
    before = 0.0
    for name in ("init", "modules", "network", "sshd"):
        if name in uptimes:
            steps[name] = uptimes[name] - before
            before = uptimes[name]
    if "sshd" in uptimes:
        steps["firmware"] = max(ready_s - uptimes["sshd"], 0.0)
    steps["ssh"] = boot_s - ready_s
    return steps


def run_bench(config: Config, repeats: int, log: Callable[[str], None]) -> int:
    cache = cache_root()
    accel = choose_accel(config.machine.accel, probe_host())
    out = new_run_dir(prefix="bench-")
    out.mkdir(parents=True, exist_ok=True)
    log(f"bench: accel {accel.accel} ({accel.reason}); {repeats} boots per figure; {out}")
    floor_initrd = build_floor_initramfs(cache)
    _, pub = make_run_key()
    log(f"bench: console and output flood of {FLOOD_MIB} MiB each ({config.kernels[0].text})")
    first = prepare(config.kernels[0], cache)
    flood_rss, flood_s = flood_peak_rss_mib(first, config, accel, out / "flood" / first.kernel.release, log)
    figures: dict[str, dict[str, Any]] = {}
    for spec in config.kernels:
        prepared = prepare(spec, cache)
        kernel = prepared.kernel
        with tempfile.TemporaryDirectory(prefix="notifier-harness-bench-") as tmp:
            plan = QemuPlan(qemu="qemu-system-x86_64", kernel=kernel.image, initrd=floor_initrd,
                            accel=accel.accel, cpus=config.machine.cpus, memory_mib=config.machine.memory_mib,
                            qmp_socket=Path(tmp) / "qmp.sock", ssh_port=free_port(), ssh_pubkey=pub,
                            extra_cmdline=config.machine.cmdline)
            log(f"bench: {kernel.release}: {repeats} raw QEMU floor boots")
            floors = [_floor_once(plan, config.machine.boot_timeout_s) for _ in range(repeats)]
        log(f"bench: {kernel.release}: {repeats} harness boots")
        boots, steps = [], []
        for i in range(repeats):
            with Machine(prepared.image, config.machine, accel, out / kernel.release / f"boot{i}", log=log) as m:
                boots.append(m.boot_s)
                assert m.console is not None
                steps.append(boot_steps(m.console.boot_steps, m.ready_s, m.boot_s))
        floor, boot = statistics.median(floors), statistics.median(boots)
        log(f"bench: {kernel.release}: probe overhead")
        with Machine(prepared.image, config.machine, accel, out / kernel.release / "overhead", log=log) as m:
            bare, probed = probe_overhead(Guest(ssh=m.ssh, release=kernel.release, accel=m.accel_used), repeats)
        figures[kernel.release] = {"floor_s": floors, "harness_boot_s": boots, "floor_median_s": floor,
                                   "boot_steps": {name: statistics.median(s[name] for s in steps) for name in BOOT_STEPS
                                                  if all(name in s for s in steps)},
                                   "harness_median_s": boot, "ratio": boot / floor,
                                   "loop_ns_bare": bare, "loop_ns_probed": probed,
                                   "probe_overhead": statistics.median(probed) / statistics.median(bare)}
    log("bench: dirty-log rates")
    rates = dirty_log_rates(config, repeats, out)
    # Seeded, so one run per kernel measures the same requests as five would.
    memslot = dirty_log_rates(config, 1, out, "memslot")
    # The config's whole suite, one kernel at a time and two at once: its wall time each way.
    suite_s: dict[int, float] = {}
    suite_rows: dict[int, list[Result]] = {}
    for jobs in (1, 2):
        log(f"bench: the whole suite, --jobs {jobs}")
        start = time.monotonic()
        suite_rows[jobs] = Run(config=config, out_dir=out / f"suite-jobs{jobs}", jobs=jobs,
                               log=partial(_prefixed, log, f"  [jobs {jobs}] ")).execute()
        suite_s[jobs] = time.monotonic() - start
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    releases = list(figures)
    width = max(28, *(len(r) for r in releases))
    rows = [("", *releases),
            ("raw QEMU floor, median s", *(f"{figures[r]['floor_median_s']:.2f}" for r in releases)),
            ("harness boot-to-SSH, median s", *(f"{figures[r]['harness_median_s']:.2f}" for r in releases)),
            ("ratio harness/floor", *(f"{figures[r]['ratio']:.2f}" for r in releases)),
            *((f"  {BOOT_STEPS[name]}, median s",
               *(f"{figures[r]['boot_steps'][name]:.2f}" if name in figures[r]['boot_steps'] else "-" for r in releases))
              for name in BOOT_STEPS),
            ("munmap/fault loop, bare, us/iter", *(f"{statistics.median(figures[r]['loop_ns_bare']) / LOOP / 1e3:.1f}"
                                                   for r in releases)),
            ("same loop, probe attached, us/iter",
             *(f"{statistics.median(figures[r]['loop_ns_probed']) / LOOP / 1e3:.1f}" for r in releases)),
            ("probe overhead (median ratio)", *(f"{figures[r]['probe_overhead']:.2f}" for r in releases))]
    if rates:
        def median_of(release: str, key: str) -> str:
            values = rates.get(release, {}).get(key, [])
            return f"{statistics.median(values):.0f}" if values else "-"
        rows += [("dirty-log operations/s, median", *(median_of(r, "ops_per_s") for r in releases)),
                 ("dirty-log examples/min, median", *(median_of(r, "examples_per_min") for r in releases))]
    if memslot:
        checked = {r: memslot.get(r, {}).get("ops_per_s", []) for r in releases}
        rows += [("memslot operations checked/s", *(f"{checked[r][0]:.0f}" if checked[r] else "-" for r in releases))]
    log("")
    label = max(len(row[0]) for row in rows)
    for row in rows:
        log(f"{row[0]:{label}}" + "".join(f"{cell:>{width + 2}}" for cell in row[1:]))
    log(f"suite ({len(suite_rows[1])} scenario runs incl. boots): {suite_s[1]:.1f} s wall with --jobs 1, "
        f"{suite_s[2]:.1f} s with --jobs 2 ({suite_s[1] / suite_s[2]:.2f}x)")
    for jobs, results in suite_rows.items():
        counts = Counter(r.verdict for r in results)
        others = ", ".join(f"{r.kernel}/{r.scenario}={r.verdict}" for r in results if r.verdict != "pass")
        log(f"  --jobs {jobs}: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
            + (f" ({others})" if others else ""))
    log(f"harness process peak RSS: {rss_mib:.0f} MiB")
    log(f"harness peak RSS under a {FLOOD_MIB} MiB console flood and a {FLOOD_MIB} MiB command output: "
        f"{flood_rss:.0f} MiB ({flood_s:.0f} s)")
    (out / "bench.json").write_text(json.dumps({"accel": accel.accel, "repeats": repeats, "kernels": figures,
                                                "dirty_log": rates, "memslot": memslot, "suite_s": {f"jobs{j}": s for j, s in suite_s.items()},
                                                "peak_rss_mib": rss_mib,
                                                "flood_peak_rss_mib": flood_rss, "flood_s": flood_s}, indent=2) + "\n")
    log(f"bench: {out / 'bench.json'}")
    return 0
