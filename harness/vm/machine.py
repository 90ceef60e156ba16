"""The QEMU machine as a context manager: launch, wait until SSH works, shut down.

Shutdown is soft first and hard last (system_powerdown, then quit, then
SIGKILL), and runs whatever happened before it, Ctrl-C included, so no QEMU
process, port or private directory outlives the Machine.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from harness.artifacts.boot_image import BootImage
from harness.config import MachineConfig
from harness.errors import BootTimeout, GuestError, MachineError, MachineLost, OutputError
from harness.vm.accel import AccelChoice
from harness.vm.console import Console
from harness.vm.qemu_args import QemuPlan, qemu_argv
from harness.vm.qmp import Monitor
from harness.vm.ssh import SshSession, make_run_key

logger = logging.getLogger(__name__)
DEFAULT_QEMU = "qemu-system-x86_64"
POWERDOWN_TIMEOUT_S = 10.0
QUIT_TIMEOUT_S = 5.0
# init starts acpid after the ready marker; a power button pressed before acpid listens is lost.
SETTLE_TIMEOUT_S = 5.0
# How long a dropped SSH connection waits for QEMU's exit to explain it.
ACCOUNT_WAIT_S = 1.0
# Another process can take the forwarded port between free_port() and QEMU's bind: try a new one.
PORT_TRIES = 5
_PR_SET_PDEATHSIG = 1
# Loaded before any fork: the child between fork and exec may not load libraries.
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent: int) -> None:
    """In QEMU's child before exec: SIGKILL when the harness dies, however it dies (SIGKILL
    included), so no QEMU outlives it.  The signal is tied to the forking thread, which for the
    harness is the one that owns the Machine and outlives it."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:     # the harness died before prctl took effect
        os._exit(1)


# A scenario's console slice as read into memory: its head and its tail, each this long, when longer.
SLICE_HALF = 4 << 20


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (QEMU may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (TIME_WAIT leftovers of closed connections do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Machine:
    """One QEMU guest.  `with Machine(...) as m:` boots it; leaving the block stops it."""

    def __init__(self, image: BootImage, machine: MachineConfig, accel: AccelChoice, out_dir: Path,
                 qemu: str = DEFAULT_QEMU, log: Callable[[str], None] = print):
        self.image = image
        self.config = machine
        self.accel = accel
        self.out_dir = out_dir
        self.qemu = qemu
        self.log = log
        self.private_dir: Optional[Path] = None
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.console: Optional[Console] = None
        self.monitor: Optional[Monitor] = None
        self._ssh: Optional[SshSession] = None
        self._key, self._pubkey = make_run_key()
        self.ssh_port = 0
        self.argv: list[str] = []
        self.boot_s = 0.0
        self.ready_s = 0.0      # from QEMU's start to init's ready marker on the console
        self.accel_used = accel.accel
        self.accel_reason = accel.reason
        self.shutdown_how = ""

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "Machine":
        self.boot()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def boot(self) -> None:
        if shutil.which(self.qemu) is None:
            raise MachineError(f"QEMU binary {self.qemu} not found; install the Debian package "
                               f"qemu-system-x86 (make setup)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        try:
            self._boot_with(self.accel.accel, watchdog=self.accel.watchdog, start=start)
        except BaseException:
            self.shutdown()
            raise
        self.boot_s = time.monotonic() - start

    def _boot_with(self, accel: str, watchdog: bool, start: float) -> None:
        deadline = start + self.config.boot_timeout_s
        try:
            self._launch(accel)
        except MachineError as e:
            if watchdog:
                return self._fall_back_to_tcg(f"QEMU under KVM failed to start ({e}: {self.stderr_tail()})")
            raise
        assert self.proc and self.console and self.monitor
        while not self.console.ready.is_set():
            silent = not self.console.first_output.is_set()
            try:
                self._check_alive("while booting", with_tail=True)
            except MachineError as e:
                # KVM that kills QEMU before the kernel said a word (QEMU 7.2
                # aborts on some MSRs under a paravirtual KVM) gets the same
                # second chance as KVM that hangs.
                if watchdog and silent:
                    return self._fall_back_to_tcg(f"QEMU under KVM died silently ({e})")
                raise
            if watchdog and silent and time.monotonic() - start > self.config.kvm_watchdog_s:
                return self._fall_back_to_tcg(
                    f"KVM showed no console output in {self.config.kvm_watchdog_s:.0f} s")
            if time.monotonic() > deadline:
                raise BootTimeout(f"guest not ready after {self.config.boot_timeout_s:.0f} s "
                                  f"({self.console.bytes_seen} console bytes); console tail:\n"
                                  f"{self.console.tail()}")
            self.console.wait(self.console.ready, 0.1)
        self.ready_s = time.monotonic() - start
        try:
            self._ssh = SshSession.connect(self.ssh_port, self._key, self.image.host_key,
                                           timeout=max(5.0, deadline - time.monotonic()),
                                           alive=lambda: self.proc is not None and self.proc.poll() is None)
        except GuestError as e:
            raise BootTimeout(f"{e}; console tail:\n{self.console.tail()}") from None
        status = self.monitor.status()
        if status != "running":
            raise MachineError(f"QMP query-status says {status!r} after boot, not 'running'")

    def _fall_back_to_tcg(self, why: str) -> None:
        self.log(f"accel: {why.splitlines()[0]}; falling back to TCG")
        self._stop_process()
        self.accel_reason = f"{self.accel.reason}; but {why.splitlines()[0]}, fell back to TCG"
        self._boot_with("tcg", watchdog=False, start=time.monotonic())

    def _launch(self, accel: str) -> None:
        if self.private_dir is None:
            # mkdtemp makes it 0700: the QMP socket is ours alone.
            self.private_dir = Path(tempfile.mkdtemp(prefix="notifier-harness-"))
        for attempt in range(PORT_TRIES):
            try:
                return self._launch_once(accel)
            except MachineError:
                if attempt + 1 == PORT_TRIES or "host forwarding rule" not in self.stderr_tail():
                    raise
                self.log(f"QEMU could not bind 127.0.0.1:{self.ssh_port} (taken meanwhile); trying another port")
                self._stop_process()

    def _launch_once(self, accel: str) -> None:
        assert self.private_dir is not None
        qmp_socket = self.private_dir / "qmp.sock"
        qmp_socket.unlink(missing_ok=True)
        self.ssh_port = free_port()
        self.accel_used = accel
        plan = QemuPlan(qemu=self.qemu, kernel=self.image.kernel, initrd=self.image.initrd, accel=accel,
                        cpus=self.config.cpus, memory_mib=self.config.memory_mib, qmp_socket=qmp_socket,
                        ssh_port=self.ssh_port, ssh_pubkey=self._pubkey, extra_cmdline=self.config.cmdline)
        self.argv = qemu_argv(plan)
        (self.out_dir / "qemu-argv.json").write_text(json.dumps(self.argv, indent=1) + "\n")
        logger.debug("QEMU: %s", shlex.join(self.argv))
        stderr = open(self.out_dir / "qemu-stderr.log", "wb")
        parent = os.getpid()
        try:
            # A session of its own: Ctrl-C reaches the harness, which then shuts QEMU down itself
            # instead of QEMU dying mid-write.  PDEATHSIG covers the harness dying without a word.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=stderr, start_new_session=True,
                                         preexec_fn=lambda: _die_with_parent(parent))
        except OSError as e:
            raise MachineError(f"cannot start {self.qemu}: {e.strerror}") from None
        finally:
            stderr.close()
        logger.debug("QEMU pid %d, SSH forwarded from 127.0.0.1:%d", self.proc.pid, self.ssh_port)
        self.console = Console(self.proc.stdout, self.out_dir / "console.log")  # type: ignore[arg-type]
        self.monitor = Monitor(qmp_socket)
        self.monitor.connect(timeout=15.0, alive=lambda: self.proc is not None and self.proc.poll() is None)

    def _check_alive(self, when: str, with_tail: bool = False) -> None:
        """Raise MachineLost if QEMU exited or the guest panicked.  `with_tail`: put the console tail
        into the message (while booting it is the only evidence; a scenario keeps its own slice)."""
        assert self.proc and self.console and self.monitor
        self.check_output()
        code = self.proc.poll()
        if code is not None:
            self.console.close(1.0)
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            tail = f"; console tail:\n{self.console.tail()}" if with_tail else ""
            if self.console.panicked.is_set():
                # A panic before pvpanic is loaded (early boot) reboots at once (panic=-1), and
                # -no-reboot turns that into a clean exit: the console is the only account.
                raise MachineLost("panic", f"guest panicked {when}: {self.console.panic_line} "
                                           f"(QEMU then {how}){tail}")
            raise MachineLost("qemu-exited", f"QEMU {how} {when}: {self.stderr_tail() or '(no stderr)'}{tail}")
        for event in self.monitor.poll_events():
            if event.get("event") == "GUEST_PANICKED":
                if not self.console.wait(self.console.panicked, 0.5):
                    # pvpanic paused the guest inside panic()'s notifier chain, which runs before
                    # console_flush_on_panic: the oops may still be unprinted.  Let the kernel go
                    # on; with panic=-1 and -no-reboot it flushes its consoles and QEMU exits.
                    try:
                        self.monitor.command("cont")
                    except MachineError:
                        pass
                    self.console.wait(self.console.panicked, 3.0)
                raise MachineLost("panic", f"guest panicked {when} (QMP GUEST_PANICKED): "
                                           f"{self.console.panic_line or 'see console'}")
        if self.console.panicked.is_set():
            raise MachineLost("panic", f"guest panicked {when}: {self.console.panic_line}")

    def check_health(self) -> None:
        """Raise MachineLost if the guest panicked or QEMU is gone, OutputError if its console can no
        longer be written (cheap: polls, never blocks)."""
        if self.proc is None:
            raise MachineLost("qemu-exited", "the machine is not running")
        self._check_alive("while a scenario ran")

    def check_output(self) -> None:
        """OutputError when console.log could not be written: the run stops on a full disk instead
        of judging a kernel on a console it no longer keeps."""
        if self.console is not None and self.console.write_error:
            raise OutputError(f"{self.console.write_error}; the run stops")

    def account_for(self, lost: MachineLost) -> MachineLost:
        """The best account of a loss: a dropped SSH connection is often QEMU dying, whose socket
        closes while the process is still exiting, so its exit gets a moment to show."""
        if lost.kind != "ssh-lost" or self.proc is None:
            return lost
        try:
            self.proc.wait(ACCOUNT_WAIT_S)
        except subprocess.TimeoutExpired:
            return lost
        try:
            self.check_health()
        except MachineLost as e:
            return e
        return lost

    def _process_state(self) -> str:
        """QEMU's state letter from /proc (R, S, T, ...), or "" when it is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return ""
        try:
            return Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return ""

    def console_offset(self) -> int:
        """How far console.log has grown: scenario slices are byte ranges of it."""
        try:
            return (self.out_dir / "console.log").stat().st_size
        except OSError:
            return 0

    def inject_host_fault(self, fault: str) -> None:
        """The host-side faults the harness's own tests inject."""
        if fault == "ssh-cut":
            if self._ssh is not None:
                self._ssh.cut()
        elif fault in ("qemu-stop", "qemu-kill") and self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP if fault == "qemu-stop" else signal.SIGKILL)
        else:
            raise MachineError(f"no host fault {fault!r}")

    def read_console(self, offset: int) -> str:
        """console.log from `offset` on (what the guest printed since); of a flood, its first and last
        SLICE_HALF bytes, with a line between them saying how much is not shown."""
        try:
            with open(self.out_dir / "console.log", "rb") as f:
                size = f.seek(0, 2)
                f.seek(offset)
                if size - offset <= 2 * SLICE_HALF:
                    data = f.read()
                else:
                    head = f.read(SLICE_HALF)
                    f.seek(size - SLICE_HALF)
                    skipped = size - offset - 2 * SLICE_HALF
                    data = head + f"\n[notifier-harness: {skipped} console bytes not shown]\n".encode() + f.read()
        except OSError:
            return ""
        return data.decode(errors="replace").replace("\r", "")

    def hang_evidence(self) -> str:
        """What a hung guest shows: QEMU's process state, the vCPUs' registers (QMP, if QEMU still
        answers) and the console tail."""
        parts = []
        state = self._process_state()
        if state:
            parts.append(f"QEMU pid {self.pid} state {state}"
                         + (" (stopped: SIGSTOP or a debugger)" if state in ("T", "t") else ""))
        if state in ("T", "t"):
            parts.append("info registers: not asked, a stopped QEMU cannot answer QMP")
        elif self.monitor is not None:
            try:
                parts.append("info registers:\n" + str(self.monitor.command(
                    "human-monitor-command", **{"command-line": "info registers -a"})))
            except MachineError as e:
                parts.append(f"info registers: QMP did not answer ({e})")
        if self.console is not None:
            parts.append("console tail:\n" + self.console.tail(40))
        return "\n".join(parts)

    def stderr_tail(self) -> str:
        try:
            text = (self.out_dir / "qemu-stderr.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-5:])

    def shutdown(self, soft: bool = True) -> None:
        """Soft, then hard; idempotent; never raises for a machine already gone.

        A guest that never became ready has no acpid to hear the power
        button yet, and a lost one (panicked, hung) will not answer it:
        both go straight to `quit` (`soft=False`).  A ready one is pressed
        once init says acpid listens (`settled`), so the press is not lost
        to a guest stopped right after boot.
        """
        ready = self._ssh is not None and soft
        if ready and self.console is not None and not self.console.wait_step("settled", SETTLE_TIMEOUT_S):
            logger.debug("guest init did not settle (acpid) in %.0f s: no power button", SETTLE_TIMEOUT_S)
            ready = False
        try:
            if self._ssh is not None:
                self._ssh.close()
                self._ssh = None
            self._stop_process(soft=ready)
        finally:
            if self.private_dir is not None:
                shutil.rmtree(self.private_dir, ignore_errors=True)
                self.private_dir = None

    def kill(self) -> None:
        """SIGKILL QEMU, from another thread (a parallel run stopping): the thread using the machine then
        finds it lost and unwinds through its own shutdown."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def _stop_process(self, soft: bool = False) -> None:
        """Powerdown (when `soft`), quit, SIGKILL, in that order; whatever interrupts the gentle steps
        (a second Ctrl-C, SIGTERM, SIGHUP) goes straight to the SIGKILL and is raised after it."""
        proc, monitor = self.proc, self.monitor
        try:
            if proc is not None and proc.poll() is None:
                self.shutdown_how = "kill"
                try:
                    self._ask_to_stop(proc, monitor, soft)
                finally:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGKILL)
                    proc.wait()
            elif proc is not None and not self.shutdown_how:
                self.shutdown_how = f"exited ({proc.returncode})"
        finally:
            if monitor is not None:
                monitor.close()
            if self.console is not None:
                self.console.close()
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()
            self.proc = self.monitor = self.console = None

    def _ask_to_stop(self, proc: "subprocess.Popen[bytes]", monitor: Optional[Monitor], soft: bool) -> None:
        steps = [("system_powerdown", POWERDOWN_TIMEOUT_S, "powerdown")] if soft else []
        steps.append(("quit", QUIT_TIMEOUT_S, "quit"))
        if monitor is None or self._process_state() in ("T", "t"):
            return
        for command, wait_s, how in steps:
            try:
                monitor.command(command)
                proc.wait(wait_s)
                self.shutdown_how = how
                logger.debug("QEMU pid %d stopped by %s (status %s)", proc.pid, command, proc.returncode)
                return
            except (MachineError, subprocess.TimeoutExpired) as e:
                logger.debug("QEMU pid %d: %s did not stop it: %s", proc.pid, command, e or "timed out")
                continue

    # -- use ---------------------------------------------------------------

    @property
    def ssh(self) -> SshSession:
        if self._ssh is None:
            raise GuestError("the guest is not booted")
        return self._ssh

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None
