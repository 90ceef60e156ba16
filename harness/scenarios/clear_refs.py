"""clear-refs: /proc/self/clear_refs (docs/clear-refs.md; the model in
harness/model/families/clear_refs.py).  Writing 4 opens one SOFT_DIRTY window over the whole
address space and leaves exactly the pages written afterwards soft-dirty (read back from
pagemap); writing 1, 2 or 3 clears accessed bits with no window and no young callback; 5 does
nothing the notifier sees."""

from __future__ import annotations

from harness.scenarios.base import PROBE_NEEDS
from harness.scenarios.mm import ProbeScenario, Script


class ClearRefs(ProbeScenario):
    name = "clear-refs"
    description = "clear_refs 4: one SOFT_DIRTY window over [0, -1UL), soft-dirty bits right; 1-3 and 5: nothing"
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_PROC_PAGE_MONITOR", "CONFIG_MEM_SOFT_DIRTY")
    scripts = (
        Script("clear-refs", (
            "map:C:256K:nothp", "fill:C:3",
            "clearrefs:4",                    # SOFT_DIRTY [0, -1UL)
            "softdirty:C",                    # nothing written since: no page soft-dirty
            "write:C:8K:4", "write:C:64K:5",  # write-protect faults reuse the pages: no window
            "softdirty:C",                    # exactly those two pages
            "clearrefs:1", "clearrefs:2", "clearrefs:3", "clearrefs:5",
            "verify:C",
        )),
    )
