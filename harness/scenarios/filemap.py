"""filemap: a MAP_SHARED file on a real block filesystem under the probe (docs/filemap.md).

The filesystem is made in the guest: a zram device added for the scenario (zram0 stays the aging
scenario's swap), an ext2-format filesystem of 4 KiB blocks from busybox's mke2fs, mounted with the
ext4 driver (no journal).  One workload run writes the file through the mapping and with pwrite,
syncs it (msync of a range, fsync of all: writeback's page_vma_mkclean_one), drops pages from the
mapping (MADV_DONTNEED), punches a hole and truncates (unmap_mapping_range's
zap_page_range_single), and reads every page back through the mapping and with pread.
"""

from __future__ import annotations

from harness.errors import GuestError
from harness.events import Event
from harness.guest import Guest
from harness.guest_data import parse_int
from harness.scenarios.base import PROBE_NEEDS, ScenarioContext
from harness.scenarios.probe import judge_run, load_probe, run_mmops
from harness.verdict import Verdict

MOUNT = "/tmp/nh-filemap"
CONTROL = "/sys/class/zram-control"
DISK_MIB = 32

SCRIPT = (
    f"fmap:F:{MOUNT}/data:1M",
    "fwrite:F:0:64K:1",          # pages 0-15 mapped and dirty
    "msync:F:0:64K",             # a PROTECTION_PAGE window per page
    "fwrite:F:64K:32K:2",        # pages 16-23 mapped and dirty
    "pwrite:F:128K:16K:3",       # pages 32-35 dirty, never mapped: written back without a window
    "fwrite:F:0:4K:4",           # page 0 again, through its write-protected PTE
    "fsync:F",                   # windows for pages 0 and 16-23, in index order
    "fdontneed:F:64K:16K",       # pages 16-19 leave the mapping (CLEAR), not the file
    "pwrite:F:64K:32K:6",        # pages 16-23 dirty again, 16-19 unmapped
    "msync:F:64K:32K",           # windows for 20-23 only
    "fverify:F",                 # every page mapped again
    "fwrite:F:160K:8K:7",        # pages 40-41 dirty
    "punch:F:128K:64K",          # 6.1: 40-41 written back first; then one CLEAR over the hole
    "fverify:F",
    "ftruncate:F:512K",          # two CLEARs from the new end of file to the mapping's end
    "ftruncate:F:1M",            # growing: nothing is mapped past the old end, no window
    "fverify:F",
)


class ZramFilesystem:
    """A zram device of its own with an ext2-format filesystem mounted by the ext4 driver; unmounted,
    reset and removed afterwards."""

    def __init__(self, guest: Guest, mount: str, mib: int):
        self.guest = guest
        self.mount = mount
        self.mib = mib
        self.device = -1

    def __enter__(self) -> "ZramFilesystem":
        g = self.guest
        # 6.1's zram compresses through the crypto API (lzo-rle, a module there, loaded by name);
        # 6.12's has its own backends.  A name that does not exist is simply not needed.
        for module in ("lzo_rle", "lzo", "zram"):
            g.modprobe(module)
        added = g.run(["cat", f"{CONTROL}/hot_add"])
        if not added.ok:
            raise GuestError(f"no zram device could be added ({CONTROL}/hot_add): "
                             f"{(added.stderr or added.stdout).strip()}")
        self.device = parse_int(added.stdout, f"{CONTROL}/hot_add", lo=0, hi=1 << 20)
        made = g.run(["sh", "-c", 'set -e; echo "$2" > "/sys/block/zram$1/disksize"; '
                      'mke2fs -F -b 4096 "/dev/zram$1" >/dev/null; mkdir -p "$3"; '
                      'mount -t ext4 "/dev/zram$1" "$3"', "zramfs", str(self.device), f"{self.mib}M", self.mount])
        if not made.ok:
            self.remove()
            raise GuestError(f"the filesystem on zram{self.device} could not be made and mounted: "
                             f"{(made.stderr or made.stdout).strip()[-300:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        if self.device < 0:
            return
        self.guest.run(["sh", "-c", 'grep -q " $3 " /proc/mounts && umount "$3"; echo 1 > "/sys/block/zram$1/reset"; '
                        'echo "$1" > "$2/hot_remove"', "zramfs", str(self.device), CONTROL, self.mount], timeout=60)
        self.device = -1


class Filemap:
    name = "filemap"
    description = ("a MAP_SHARED file on ext4 over zram: writeback's PROTECTION_PAGE per dirty mapped page, "
                   "CLEARs of MADV_DONTNEED, punch-hole and truncate, data read back both ways")
    knobs = frozenset({"probe_corrupt"})
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_ZRAM", "CONFIG_EXT4_FS")

    def run(self, ctx: ScenarioContext) -> Verdict:
        load_probe(ctx.guest, ctx.config.probe_corrupt)
        with ZramFilesystem(ctx.guest, MOUNT, DISK_MIB):
            run = run_mmops(ctx.guest, "filemap", SCRIPT)
        findings, judgement = judge_run(run, ctx.features, ctx.out_dir)
        mine = [p for p in judgement.trace.pairs if p.start.pid == run.pid]
        counts = {e: sum(p.event == e for p in mine) for e in (Event.PROTECTION_PAGE, Event.CLEAR)}
        notes = [f"filemap: {len(run.records)} records, {judgement.checked_ops} operations checked, "
                 f"{counts[Event.PROTECTION_PAGE]} PROTECTION_PAGE (writeback) and {counts[Event.CLEAR]} CLEAR "
                 f"windows from the workload, {len(judgement.background)} records from other tasks"]
        return Verdict.from_findings(findings, notes)
