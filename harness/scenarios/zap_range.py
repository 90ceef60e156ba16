"""zap-range: the kernel zapping part of the workload's mm for it (docs/zap-range.md; the model in
harness/model/families/zap_range.py): joining a new time namespace zaps the [vvar] VMA, and TCP
zero-copy receive on a loopback connection zaps the pages of the socket's mapping it is about to
fill.  6.1 does both with zap_page_range, 6.12 with zap_page_range_single."""

from __future__ import annotations

from harness.scenarios.base import PROBE_NEEDS
from harness.scenarios.mm import ProbeScenario, Script


class ZapRange(ProbeScenario):
    name = "zap-range"
    description = "setns into a time namespace zaps [vvar]; TCP_ZEROCOPY_RECEIVE zaps what it maps: one CLEAR each"
    needs: tuple[str, ...] = (*PROBE_NEEDS, "CONFIG_TIME_NS", "CONFIG_INET")
    scripts = (
        Script("zap-range", (
            "timens",
            "tcpzc:64K:12388",                # three pages and a bit queued: the first three pages zapped
            "tcpzc:16K:40K",                  # more queued than the mapping holds: all of it zapped
        )),
    )
