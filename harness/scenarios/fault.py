"""fault: the harness's own crash, warning and hang handling, tested on a real kernel.

A short probe workload runs and is judged as usual; then the configured fault
is injected in the middle of the scenario, from inside the guest (the probe
module's debug ioctl, sysrq) or from the host (QEMU stopped or killed, the
SSH connection cut).  The scenario itself passes; what the runner makes of the
fault (a failed scenario naming the kernel's report, an error naming the hang
or the lost connection, a reboot for the scenarios after it) is the test.
"""

from __future__ import annotations

import threading

from harness.artifacts.guest_build import NHCTL
from harness.errors import GuestError
from harness.scenarios.base import PROBE_NEEDS, ScenarioContext
from harness.scenarios.probe import judge_run, load_probe, run_mmops
from harness.verdict import Verdict


# In-guest faults: the command, and the settings that make the kernel notice within seconds.
GUEST = {
    "panic": ("echo c > /proc/sysrq-trigger", ""),
    "warn": (f"{NHCTL} debug warn", ""),
    "oops": (f"{NHCTL} debug oops", ""),
    # An Oops that leaves the probe's mutex held: the guest must be rebooted for the next scenario.
    "oops-locked": (f"{NHCTL} debug oops-locked", ""),
    # Soft lockup after 2 x watchdog_thresh; an RCU stall report after rcu_cpu_stall_timeout.
    "lockup": (f"{NHCTL} debug spin 8",
               "echo 1 > /proc/sys/kernel/watchdog_thresh; "
               "echo 3 > /sys/module/rcupdate/parameters/rcu_cpu_stall_timeout"),
    "hung-task": (f"{NHCTL} debug sleep 6", "echo 2 > /proc/sys/kernel/hung_task_timeout_secs"),
    # Every vCPU spinning with preemption off: nothing answers until long after the time limit.  The
    # lockup and stall detectors are off, so it stays a hang the kernel does not report (an error).
    "hang": (f"for c in $(seq 0 $(($(nproc) - 1))); do taskset -c $c {NHCTL} debug spin 600 & done; wait",
             "echo 0 > /proc/sys/kernel/soft_watchdog; "
             "echo 1 > /sys/module/rcupdate/parameters/rcu_cpu_stall_suppress"),
}
HOST = ("qemu-stop", "qemu-kill", "ssh-cut")


class Fault:
    name = "fault"
    description = "inject a configured kernel or host fault mid-scenario (the harness's own crash handling test)"
    knobs = frozenset({"fault", "probe_corrupt"})
    needs: tuple[str, ...] = PROBE_NEEDS

    def run(self, ctx: ScenarioContext) -> Verdict:
        cfg, guest = ctx.config, ctx.guest
        load_probe(guest, cfg.probe_corrupt)
        run = run_mmops(guest, "before-fault", ["map:A:64K:nothp", "dontneed:A:0:16K", "munmap:A:16K:16K"])
        findings, _ = judge_run(run, ctx.features, ctx.out_dir)
        if cfg.fault in GUEST:
            command, settings = GUEST[cfg.fault]
            if settings:
                guest.check(["sh", "-c", settings])
            # The command's own status does not matter (an Oops kills it); the kernel's reaction does.
            guest.run(["sh", "-c", command], timeout=cfg.timeout_s)
        elif cfg.fault in HOST:
            timer = threading.Timer(1.0, ctx.host_fault, (cfg.fault,))
            timer.start()
            try:
                guest.run(["sleep", "20"], timeout=cfg.timeout_s)
            finally:
                timer.cancel()
        elif cfg.fault != "none":
            raise GuestError(f"fault {cfg.fault!r} has no injection")
        return Verdict.from_findings(findings, [f"injected: {cfg.fault}"])
