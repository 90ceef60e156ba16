"""zram swap in the guest, for scenarios that need anonymous memory to be reclaimable."""

from __future__ import annotations

from harness.errors import GuestError
from harness.guest import Guest

DEVICE = "/dev/zram0"
SYSFS = "/sys/block/zram0"


class ZramSwap:
    """A zram device used as swap while the block runs; swapped off and reset afterwards."""

    def __init__(self, guest: Guest, mib: int):
        self.guest = guest
        self.mib = mib

    def __enter__(self) -> "ZramSwap":
        g = self.guest
        # zram's default compressor: through the crypto API on 6.1 (lzo-rle, a module there, asked for
        # by a module alias the initramfs does not index, so loaded by name), zram's own backend on
        # 6.12 (lz4, a dependency of the zram module).  A missing name is simply not needed.
        for compressor in ("lzo_rle", "lzo"):
            g.modprobe(compressor)
        loaded = g.modprobe("zram")
        if not loaded.ok and not g.run(["test", "-e", SYSFS]).ok:
            raise GuestError(f"zram is not available in the guest: {(loaded.stderr or loaded.stdout).strip()}")
        setup = g.run(["sh", "-c", 'set -e; echo "$2" > "$1/disksize"; mkswap "$3" >/dev/null; swapon "$3"',
                       "zram", SYSFS, f"{self.mib}M", DEVICE])
        if not setup.ok:
            self.remove()
            raise GuestError(f"zram swap could not be set up: {(setup.stderr or setup.stdout).strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        g = self.guest
        g.run(["sh", "-c", 'grep -q "^$1 " /proc/swaps && swapoff "$1"; echo 1 > "$2/reset"', "zram",
               DEVICE, SYSFS], timeout=120)
