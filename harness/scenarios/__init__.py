"""The scenario registry: every scenario the harness can run, by name."""

from __future__ import annotations

from harness.scenarios.aging import Aging
from harness.scenarios.base import Scenario, ScenarioContext
from harness.scenarios.clear_refs import ClearRefs
from harness.scenarios.collapse import ShmemCollapse
from harness.scenarios.damon import Damon
from harness.scenarios.dirty_log import DirtyLog
from harness.scenarios.fault import Fault
from harness.scenarios.filemap import Filemap
from harness.scenarios.get_put import GetPut, GetPutOverput
from harness.scenarios.halt_poll import HaltPoll, HaltPollMisreport
from harness.scenarios.hugetlb import Hugetlb
from harness.scenarios.ksm import Ksm
from harness.scenarios.madv_free import MadvFree, MadvPageout
from harness.scenarios.kvm import KvmKsm, KvmOom, KvmThpSplit
from harness.scenarios.kvm_migrate import KvmMigrate
from harness.scenarios.memslot import Memslot, MemslotSkipDelete
from harness.scenarios.migrate import Migrate
from harness.scenarios.mm import Cow, ExitRelease, MmBasic, ThpSplit
from harness.scenarios.mremap import Mremap
from harness.scenarios.oom import MemcgOom, MemcgOomNonblockFail
from harness.scenarios.smoke import Smoke
from harness.scenarios.uffd import PagemapUffd
from harness.scenarios.uprobe import Uprobe
from harness.scenarios.workload import Workload
from harness.scenarios.zap_range import ZapRange

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Smoke(), MmBasic(), ThpSplit(), Cow(), ExitRelease(), Ksm(), Aging(), MemcgOom(), MemcgOomNonblockFail(), DirtyLog(),
    KvmThpSplit(), KvmKsm(), KvmOom(), KvmMigrate(), GetPut(), Memslot(), HaltPoll(), Filemap(), Hugetlb(), MadvFree(), MadvPageout(), Mremap(), ClearRefs(), ZapRange(), Uprobe(), ShmemCollapse(), PagemapUffd(), Migrate(), Damon(), Fault(), Workload(), GetPutOverput(), MemslotSkipDelete(), HaltPollMisreport())}

# Scenarios that test the harness itself (fault injection, a seeded defect): never in the default configs.
SELF_TESTS = frozenset({"fault", "get-put-overput", "memslot-skip-delete", "halt-poll-misreport"})

# Scenarios that need the user's input (a program to run): never in the default configs either.
USER_INPUT = frozenset({"workload"})

# What the config accepts for each scenario besides `name` and `timeout`.
KNOBS: dict[str, frozenset[str]] = {name: s.knobs for name, s in SCENARIOS.items()}

__all__ = ["KNOBS", "SCENARIOS", "SELF_TESTS", "USER_INPUT", "Scenario", "ScenarioContext"]
