"""The one exception root of notifier-harness.

Every error the harness raises on purpose derives from HarnessError, and its
str() is a single line a user can act on: it names the thing that is wrong and,
where there is a choice, what would be valid.  The CLI prints that line and
exits 2; anything else escaping is a bug and keeps its traceback.

    HarnessError
     ├── ConfigError        a config file, a CLI value or a kernel spec is wrong
     ├── ArtifactError      a kernel, initramfs or build input cannot be had
     ├── MachineError       QEMU would not start, or died, or QMP failed
     │    ├── BootTimeout   the guest never became ready (carries the console tail)
     │    └── MachineLost   a booted guest is gone: panic, QEMU exited, hang, SSH lost
     ├── GuestError         SSH to a booted guest failed, or a guest command did
     │    └── CommandTimeout  a guest command or the scenario ran out of time
     └── OutputError        the run directory cannot be written (full disk, permissions)
"""

from __future__ import annotations


class HarnessError(Exception):
    """Root of every deliberate error."""


class ConfigError(HarnessError):
    """A configuration value (file, CLI flag, kernel spec) is invalid."""


class ArtifactError(HarnessError):
    """A kernel, module tree or initramfs could not be found, fetched or built."""


class MachineError(HarnessError):
    """The QEMU process failed to launch, died, or its monitor misbehaved."""


class BootTimeout(MachineError):
    """The guest did not become ready in time; the message holds the console tail."""


class MachineLost(MachineError):
    """The booted guest can no longer be used; `kind` says how it was lost.

    panic       the kernel panicked (console or QMP GUEST_PANICKED)
    qemu-exited the QEMU process exited or was killed
    hang        neither SSH nor the console made progress within the time limit
    ssh-lost    the SSH connection dropped while QEMU was still running
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class GuestError(HarnessError):
    """Talking to a booted guest failed (SSH connect, a command, a file copy)."""


class CommandTimeout(GuestError):
    """A guest command, or the scenario's whole time budget, ran out."""


class OutputError(HarnessError):
    """The run directory cannot be written: the run stops, with what was written so far."""
