"""What a machine boots: the artifacts' one output and the machine's one input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BootImage:
    """A kernel image and an initramfs whose sshd host key is known (and pinned)."""

    kernel: Path
    initrd: Path
    host_key: str
