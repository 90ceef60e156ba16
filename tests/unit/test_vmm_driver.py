"""The minivmm driver's bad-input handling: a VMM that crashes, hangs or prints garbage is an
error naming what it last said, and the process is ended either way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest

from harness.errors import CommandTimeout
from harness.kvm.vmm import Vmm, VmmError
from harness.vm.ssh import CommandResult


@dataclass
class FakeProc:
    lines: list                      # what the VMM prints: str lines, None = exits, "HANG" = never answers
    sent: list = field(default_factory=list)
    stderr: bytearray = field(default_factory=bytearray)
    closed: int = 0
    status: Optional[int] = 0

    def send_line(self, line: str) -> None:
        self.sent.append(line)

    def read_line(self, timeout: float) -> Optional[str]:
        item = self.lines.pop(0) if self.lines else None
        if item == "HANG":
            raise CommandTimeout("no answer")
        return item

    def close(self, timeout: float = 10.0) -> Optional[int]:
        self.closed += 1
        return self.status


@dataclass
class FakeGuest:
    proc: FakeProc
    commands: list = field(default_factory=list)
    watch: None = None

    @property
    def ssh(self) -> "FakeGuest":
        return self

    def start(self, argv, watch=None) -> FakeProc:
        self.commands.append(argv)
        return self.proc

    def timeout_for(self, wanted: float) -> float:
        return wanted

    def run(self, argv, timeout: float = 60.0) -> CommandResult:
        self.commands.append(argv)
        return CommandResult(" ".join(argv), 0, b"", "", 0.0)


HELLO = '{"op": "hello", "pid": 77}'


def vmm(*lines, status: Optional[int] = 0) -> tuple[Vmm, FakeGuest]:
    guest = FakeGuest(FakeProc([HELLO, *lines], status=status))
    return Vmm(guest), guest   # type: ignore[arg-type]


def test_answers_carry_ret_and_errno_back():
    v, guest = vmm('{"op": "get", "ret": -1, "errno": 2}')
    assert v.pid == 77 and v.call("get", slot=1) == {"op": "get", "ret": -1, "errno": 2}
    assert guest.proc.sent == ['{"op": "get", "slot": 1}']


@pytest.mark.parametrize("said,message", [
    ("Segmentation fault", "answered 'get' with bad data (minivmm: not JSON"),
    ('{"op": "read", "ret": 0, "errno": 0}', "out of turn"),
    ('{"op": "get", "error": "KVM_RUN: the L2 did not exit in 20 s"}', "could not do 'get': KVM_RUN"),
    (None, "exited (status 0) instead of answering 'get'"),
    ("HANG", "gave no answer to 'get'"),
])
def test_bad_answers_are_errors_with_the_last_exchange(said, message):
    v, _ = vmm(said)
    with pytest.raises(VmmError) as e:
        v.call("get", slot=1)
    assert message in str(e.value) and '> {"op": "get", "slot": 1}' in str(e.value)


def test_a_vmm_that_will_not_exit_is_killed():
    v, guest = vmm(status=None)
    v.close()
    assert ["kill", "-9", "77"] in guest.commands and guest.proc.closed == 2


def test_the_cgroup_is_joined_before_exec():
    guest = FakeGuest(FakeProc([HELLO]))
    Vmm(guest, cgroup="/sys/fs/cgroup/x", corrupt="skip-clear")  # type: ignore[arg-type]
    script = guest.commands[0][2]
    assert script.startswith("echo $$ > /sys/fs/cgroup/x/cgroup.procs && exec ") and "--corrupt skip-clear" in script


def test_a_vmm_meant_to_be_killed_that_answers_is_an_error():
    v, _ = vmm('{"op": "write", "ret": 0, "errno": 0}')
    v.send("write", pages=[0], value=1)
    with pytest.raises(VmmError, match="survived and answered"):
        v.wait_killed(5)
    v, _ = vmm(None)
    v.send("write", pages=[0], value=1)
    v.wait_killed(5)
    assert v.exit_status == 0
