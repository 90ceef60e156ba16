"""The one exception root of notifier-harness.

Every error the harness raises on purpose derives from HarnessError, and its
str() is a single line a user can act on: it names the thing that is wrong and,
where there is a choice, what would be valid.  The CLI prints that line and
exits 2; anything else escaping is a bug and keeps its traceback.

    HarnessError
     ├── ConfigError        a config file, a CLI value or a kernel spec is wrong
     ├── ArtifactError      a kernel, initramfs or build input cannot be had
     ├── MachineError       QEMU would not start, or died, or QMP failed
     │    └── BootTimeout   the guest never became ready (carries the console tail)
     └── GuestError         SSH to a booted guest failed, or a guest command did
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


class GuestError(HarnessError):
    """Talking to a booted guest failed (SSH connect, a command, a file copy)."""
