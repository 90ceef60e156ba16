"""uprobe: a uprobe placed on the workload's own text and removed again, through tracefs
(harness/model/families/uprobe.py judges the windows; docs/uprobe.md)."""

from __future__ import annotations

from harness.errors import GuestError
from harness.guest import Guest
from harness.scenarios.base import PROBE_NEEDS, ScenarioContext
from harness.scenarios.mm import ProbeScenario, Script
from harness.verdict import Verdict

# Every uprobe event of the workload's group, disabled and removed: one the workload left behind
# when it failed between placing and removing its probe would stay in every later mm mapping it.
CLEAR_UPROBES = ('cd /sys/kernel/tracing || exit 0; for d in events/nhup/*/; do [ -d "$d" ] || continue; '
                 'n=$(basename "$d"); echo 0 > "$d/enable" && echo "-:nhup/$n" >> uprobe_events || exit 1; done')


def clear_uprobes(guest: Guest) -> None:
    result = guest.run(["sh", "-c", CLEAR_UPROBES])
    if not result.ok:
        raise GuestError(f"removing the workload's uprobe events failed: {(result.stderr or result.stdout).strip()}")


class Uprobe(ProbeScenario):
    name = "uprobe"
    description = ("a uprobe placed on and removed from the workload's own text: __replace_page's 4 KiB CLEAR "
                   "each way (change_pte inside when placing it, on 6.1)")
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_UPROBE_EVENTS")
    scripts = (Script("uprobe", ("uprobe-on", "uprobe-off")),)

    def run(self, ctx: ScenarioContext) -> Verdict:
        clear_uprobes(ctx.guest)
        try:
            verdict = super().run(ctx)
        except BaseException:
            ctx.guest.run(["sh", "-c", CLEAR_UPROBES])
            raise
        clear_uprobes(ctx.guest)
        return verdict
