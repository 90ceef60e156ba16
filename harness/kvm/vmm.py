"""minivmm, the VMM inside the guest, driven as one long-lived process over one SSH channel.

Each request is one JSON line and gets one JSON line back.  An answer's
`ret`/`errno` are the kernel's and are for the caller to judge; an `error`
key means minivmm could not do what was asked (a setup step failed, the L2
did not come back), which is the harness's problem, not a verdict on KVM.
"""

from __future__ import annotations

import json
import shlex
from collections import deque
from typing import Any, Optional, TextIO

from harness.artifacts.guest_build import MINIVMM
from harness.errors import CommandTimeout, GuestError, HarnessError
from harness.guest import Guest
from harness.guest_data import PID_MAX, GuestDataError, int_field, parse_json_line

KVM_MODULES = {"svm": "kvm_amd", "vmx": "kvm_intel"}


class VmmError(GuestError):
    """minivmm crashed, hung, printed garbage or could not set the VM up."""


def load_kvm(guest: Guest) -> tuple[Optional[str], Optional[str]]:
    """Load the KVM module for the guest's CPU: (module, problem).  The module is None when the CPU
    shows neither svm nor vmx; the problem is None when /dev/kvm is there afterwards."""
    flags = guest.cpu_flags()
    module = next((m for flag, m in KVM_MODULES.items() if flag in flags), None)
    if module is None:
        return None, None
    loaded = guest.modprobe(module)
    # Built in, modprobe finds no module to load: /dev/kvm is what counts.
    if guest.run(["test", "-c", "/dev/kvm"]).ok:
        return module, None
    if not loaded.ok:
        return module, f"modprobe {module} failed: {(loaded.stderr or loaded.stdout).strip()}"
    return module, f"/dev/kvm did not appear after loading {module}"


def prepare_kvm(guest: Guest) -> Optional[str]:
    """Load KVM; the reason the guest cannot be a KVM host, or None."""
    module, problem = load_kvm(guest)
    if module is None:
        return f"the guest CPU shows neither svm nor vmx under {guest.accel}: no KVM inside the guest"
    return problem


class Vmm:
    """One minivmm process.  `cgroup`: it joins that cgroup before exec (the OOM scenario)."""

    def __init__(self, guest: Guest, corrupt: str = "off", cgroup: Optional[str] = None,
                 timeout: float = 60.0, transcript: Optional[TextIO] = None):
        self.guest = guest
        self.timeout = timeout
        self.history: deque[str] = deque(maxlen=6)    # the last lines exchanged, for error messages
        self.transcript = transcript                   # every line exchanged, as it happens
        self.last_request = ""
        argv = [MINIVMM] + (["--corrupt", corrupt] if corrupt != "off" else [])
        command = " ".join(shlex.quote(a) for a in argv)
        if cgroup:
            command = f"echo $$ > {shlex.quote(cgroup)}/cgroup.procs && exec {command}"
        self.proc = guest.ssh.start(["sh", "-c", command], watch=guest.watch)
        self.exit_status: Optional[int] = None
        try:
            self.pid = int_field(self._answer("hello"), "pid", "minivmm hello", lo=1, hi=PID_MAX)
        except HarnessError:
            self.proc.close(timeout=3)    # its stdin closed, a minivmm still running reads EOF and exits
            raise

    def _said(self, line: str) -> None:
        self.history.append(line[:300])
        if self.transcript is not None:
            self.transcript.write(line + "\n")
            self.transcript.flush()     # a harness killed mid-run still leaves what was said

    def _fail(self, what: str) -> VmmError:
        said = "; ".join(self.history)
        err = self.proc.stderr.decode(errors="replace").strip()[-300:]
        error = VmmError(f"minivmm {what}{'; last exchanged: ' + said if said else ''}"
                         f"{'; stderr: ' + err if err else ''}")
        if self.transcript is not None:
            self.transcript.write(f"! {error}\n")
        return error

    def _answer(self, op: str, timeout: Optional[float] = None) -> dict[str, Any]:
        wait = timeout or self.timeout
        try:
            line = self.proc.read_line(self.guest.timeout_for(wait))
        except CommandTimeout:
            raise self._fail(f"gave no answer to {op!r} in {wait:.0f} s") from None
        if line is None:
            self.exit_status = self.proc.close(timeout=2)
            raise self._fail(f"exited (status {self.exit_status}) instead of answering {op!r}")
        self._said(f"< {line}")
        try:
            answer = parse_json_line(line, "minivmm")
        except GuestDataError as e:
            raise self._fail(f"answered {op!r} with bad data ({e})") from None
        if answer.get("op") != op:
            raise self._fail(f"answered {op!r} out of turn")
        if "error" in answer:
            raise self._fail(f"could not do {op!r}: {str(answer['error'])[:300]}")
        return answer

    def call(self, op: str, timeout: Optional[float] = None, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        return self._answer(op, timeout)

    def send(self, op: str, **args: Any) -> None:
        """A request on its own: its answer may never come (the OOM killer ends the VMM mid-request)."""
        self.last_request = json.dumps({"op": op, **args})
        self._said(f"> {self.last_request}")
        self.proc.send_line(self.last_request)

    def wait_killed(self, timeout: float) -> None:
        """After a request the VMM should not live to answer: its output ends, or VmmError."""
        try:
            line = self.proc.read_line(self.guest.timeout_for(timeout))
        except CommandTimeout:
            raise self._fail(f"neither answered nor exited in {timeout:.0f} s") from None
        if line is not None:
            raise self._fail(f"survived and answered: {line[:200]}")
        self.exit_status = self.proc.close(timeout=2)

    def close(self) -> None:
        """End the process whatever state it is in; the kernel tears the VM down with it."""
        status = self.proc.close(timeout=3)
        if status is None:
            try:
                self.guest.run(["kill", "-9", str(self.pid)], timeout=10)
            except HarnessError:
                pass    # the error that brought us here says more; the runner judges the machine
            status = self.proc.close(timeout=3)
        self.exit_status = status

    def __enter__(self) -> "Vmm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
