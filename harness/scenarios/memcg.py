"""A cgroup v2 memory controller for one workload, made and removed over SSH."""

from __future__ import annotations

import time
from typing import Optional

from harness.errors import GuestError
from harness.guest import Guest
from harness.guest_data import PID_MAX, parse_int, parse_ints, parse_key_ints

ROOT = "/sys/fs/cgroup"


class Memcg:
    """`max_mib` None: no limit, and swap allowed (for reclaim); else memory.max and no swap (for OOM)."""

    def __init__(self, guest: Guest, name: str, max_mib: Optional[int]):
        self.guest = guest
        self.path = f"{ROOT}/{name}"
        self.max_bytes = max_mib << 20 if max_mib is not None else None

    def __enter__(self) -> "Memcg":
        g = self.guest
        limits = ('echo "$3" > "$2/memory.max"; if [ -e "$2/memory.swap.max" ]; then echo 0 > "$2/memory.swap.max"; '
                  'fi' if self.max_bytes is not None else "true")
        setup = g.run(["sh", "-c", 'set -e; grep -qw memory "$1/cgroup.subtree_control" || '
                       f'echo +memory > "$1/cgroup.subtree_control"; mkdir "$2"; {limits}',
                       "memcg", ROOT, self.path, str(self.max_bytes)])
        if not setup.ok:
            self.remove()
            raise GuestError(f"memcg {self.path} cannot be created: {(setup.stderr or setup.stdout).strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def events(self) -> dict[str, int]:
        path = f"{self.path}/memory.events"
        return parse_key_ints(self.guest.read_text(path), path)

    def current(self) -> int:
        path = f"{self.path}/memory.current"
        return parse_int(self.guest.read_text(path), path, lo=0)

    def procs(self) -> list[int]:
        path = f"{self.path}/cgroup.procs"
        return parse_ints(self.guest.read_text(path), path, lo=1, hi=PID_MAX)

    def remove(self, tries: int = 20) -> None:
        """rmdir, retried: a killed task leaves the cgroup a moment after it is reaped."""
        for _ in range(tries):
            if self.guest.run(["rmdir", self.path]).ok or not self.guest.run(["test", "-d", self.path]).ok:
                return
            time.sleep(0.1)
        raise GuestError(f"memcg {self.path} could not be removed; tasks left: {self.procs()}")
