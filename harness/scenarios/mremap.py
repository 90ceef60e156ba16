"""mremap: shrink and grow in place, moves to a fixed address, expansion by moving, a head piece
moved out of a VMA, PMD-aligned and misaligned moves of PMD-mapped THPs (docs/mremap.md; the
model in harness/model/families/mremap.py).  Every move is followed by a verify: the data moves
with the mapping.  The last move of `4k` starts at an unaligned VMA start with a mutually aligned
destination: 6.12 realigns move_page_tables' window down to the PMD boundary, 6.1 does not."""

from __future__ import annotations

from harness.scenarios.base import PROBE_NEEDS
from harness.scenarios.mm import ProbeScenario, Script


class Mremap(ProbeScenario):
    name = "mremap"
    description = "mremap shrinks (munmap of the tail), grows, moves (UNMAP over the old range), THP moves and splits"
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_TRANSPARENT_HUGEPAGE")
    scripts = (
        Script("4k", (
            "map:A:4M:nothp", "fill:A:3",
            "mremap:A:0:4M:3076K",            # shrink in place: the split CLEAR at the new end, UNMAP of the tail
            "mremap:A:0:3076K:4M",            # grow in place: nothing
            "mremap:A:0:4M:4M:fixed:8",       # move: UNMAP (move_page_tables), UNMAP (do_munmap of the old range)
            "verify:A",
            "mremap:A:0:4M:6M:fixed:9",       # expand by moving
            "verify:A",
            "mremap:A:0:1M:2M:move:B",        # the head grows: moved where the kernel likes, the VMA split first
            "verify:A", "verify:B",
            "mremap:A:0:5M:5M:fixed:10+1M",   # an unaligned VMA start, mutually aligned: 6.12 realigns
            "verify:A",
        )),
        Script("thp", (
            "map:T:4M:thp", "fill:T:4",
            "mremap:T:0:4M:4M:fixed:8",       # both PMDs moved whole (move_huge_pmd): no nested window
            "verify:T",
            "mremap:T:0:4M:4M:fixed:9+1M",    # misaligned: each THP split inside the UNMAP window
            "verify:T",
            "map:U:4M:thp", "fill:U:6",
            "mremap:U:0:4M:3M",               # shrink through a THP: its split, then UNMAP of the tail
            "mremap:U:0:3M:3M:fixed:10",      # the remaining THP moves whole, the split block as PTEs
            "verify:U",
        )),
    )
