"""The primary MMU's young-bit clears and the notifier core's young entry points, traced together
in the guest for the pairing rule (harness/model/young.py).

kprobes in a tracefs instance of their own (`nh-young`, group `nhyoung`), apart from the call-site
coverage's (`nh-cov`, group `nhcov`) and KVM's top-level `nh` group:

  yp_pte   ptep_test_and_clear_young      mm (vma->vm_mm), addr, entry (*ptep), caller ($stack0)
  yp_pmd   pmdp_test_and_clear_young      the same for the PMD
  yp_ptef  ptep_clear_flush_young         the same
  yp_pmdf  pmdp_clear_flush_young         the same
  yn_cy    __mmu_notifier_clear_young     mm, start, end
  yn_cfy   __mmu_notifier_clear_flush_young
  yn_ty    __mmu_notifier_test_young      mm, start
  yn_rel   __mmu_notifier_release         mm

vma->vm_mm is read through BTF where the kernel's kprobes can (6.12); on 6.1, whose kprobes
cannot, at its offset 16 (struct vm_area_struct {vm_start, vm_end, vm_mm, ...}; checked against a
6.1 guest: the primaries' mm equals the one __mmu_notifier_clear_flush_young was called with).
Another layout is not guessed: the trace is then unavailable and says why.  What ftrace prints
(one line per call; 6.12.117 cloud kernel):

    mmops-199 [000] ...1.  4.327572: yp_pte: (ptep_test_and_clear_young+0x4/0x40) mm=0xff2c..
        addr=0x4c9000 entry=0x840000003ff23825 caller=walk_pud_range+0x45a/0x9a0
    mmops-199 [000] ...1.  4.332692: yn_cy: (__mmu_notifier_clear_young+0x4/0x90) mm=0xff2c..
        start=0x4c9000 end=0x4ca000

The probes are not filtered in the kernel: the workload's mm is not known before it runs.  The
rule keeps the calls on the mm the workload's task released at exit (yn_rel), between its first
operation and its exit.  The trace is guest text: a line that is not what ftrace prints for these
probes is an error, and so is an event lost to a full buffer (a lost secondary would read as a
finding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

from harness.errors import GuestError
from harness.guest import Guest
from harness.guest_data import PID_MAX, U64_MAX, GuestDataError, parse_int
from harness.model.young import PRIMARIES, RELEASE, Hit
from harness.tracefs import (HEADER, EventLines, collect_script, event_lines, instance_path, make_script,
                             remove_script, split_collection)

INSTANCE = instance_path("nh-young")
GROUP = "nhyoung"
PRIMARY_ARGS_BTF = "mm=vma->vm_mm:x64 addr=%si:x64 entry=+0(%dx):x64 caller=$stack0:symbol"
PRIMARY_ARGS_61 = "mm=+16(%di):x64 addr=%si:x64 entry=+0(%dx):x64 caller=$stack0:symbol"
# kprobe event -> (the function it is placed on, what Hit.what it records, its fetch arguments;
# "" for the primaries: PRIMARY_ARGS_BTF or PRIMARY_ARGS_61).
PROBES: Mapping[str, tuple[str, str, str]] = {
    "yp_pte": ("ptep_test_and_clear_young", "ptep_test_and_clear_young", ""),
    "yp_pmd": ("pmdp_test_and_clear_young", "pmdp_test_and_clear_young", ""),
    "yp_ptef": ("ptep_clear_flush_young", "ptep_clear_flush_young", ""),
    "yp_pmdf": ("pmdp_clear_flush_young", "pmdp_clear_flush_young", ""),
    "yn_cy": ("__mmu_notifier_clear_young", "clear_young", "mm=%di:x64 start=%si:x64 end=%dx:x64"),
    "yn_cfy": ("__mmu_notifier_clear_flush_young", "clear_flush_young", "mm=%di:x64 start=%si:x64 end=%dx:x64"),
    "yn_ty": ("__mmu_notifier_test_young", "test_young", "mm=%di:x64 start=%si:x64"),
    "yn_rel": ("__mmu_notifier_release", RELEASE, "mm=%di:x64"),
}
assert all(what in PRIMARIES for name, (_, what, args) in PROBES.items() if not args)
BUFFER_KB = 8192
STATS_END = "--nh-young--"
_NAMES = " ".join(PROBES)

# Disables our events in our instance, removes it and our kprobes (only ours: the coverage's and
# KVM's stay).
_CLEAN = remove_script(INSTANCE, GROUP, PROBES)


def _define(name: str, args: str) -> str:
    """Appends kprobe `name`; `args` is shell text inside double quotes ($A expands, \\$stack0 does not)."""
    return f'echo "p:$G/{name} {PROBES[name][0]} {args}" >> "$T/kprobe_events" || exit 1; '


def _quoted(args: str) -> str:
    return args.replace("$", "\\$")


_PRIMARY_NAMES = [n for n, (_, _, args) in PROBES.items() if not args]
# Places the probes (BTF first, 6.1's offset on 6.1 only), makes the instance and enables them
# there.  Prints `args btf` or `args 6.1`; prints `args none` and exits 3 when vma->vm_mm cannot
# be read on this kernel.
SETUP_SCRIPT = (
    _CLEAN
    + f'A=\'{PRIMARY_ARGS_BTF}\'; '
    + f'if echo "p:$G/{_PRIMARY_NAMES[0]} {PROBES[_PRIMARY_NAMES[0]][0]} $A" >> "$T/kprobe_events" 2>/dev/null; then '
      'echo "args btf"; else case "$(uname -r)" in '
      f'6.1.*) A=\'{PRIMARY_ARGS_61}\'; echo "args 6.1"; '
    + _define(_PRIMARY_NAMES[0], "$A").rstrip("; ") + ';; '
    + '*) echo "args none"; exit 3;; esac; fi; '
    + "".join(_define(n, "$A") for n in _PRIMARY_NAMES[1:])
    + "".join(_define(n, _quoted(args)) for n, (_, _, args) in PROBES.items() if args)
    + make_script(BUFFER_KB)
    + f'for n in {_NAMES}; do echo 1 > "$I/events/$G/$n/enable" || exit 1; done'
)
COLLECT_SCRIPT = collect_script(INSTANCE, STATS_END)
TEARDOWN_SCRIPT = _CLEAN + "true"

MAX_LINE = 1024
_HEADER = re.compile(HEADER + r"(?P<event>\w{1,32}):\s+"
                     r"\((?P<func>[\w.]{1,128})\+0x[0-9a-f]{1,8}/0x[0-9a-f]{1,8}\)(?P<args>.*)$", re.ASCII)
_ARG = re.compile(r"\s(?P<key>[a-z]{1,8})=(?P<value>\S{1,200})", re.ASCII)
_HEX = re.compile(r"0x[0-9a-f]{1,16}", re.ASCII)
_SYMBOL = re.compile(r"(?:[\w.]{1,128}\+0x[0-9a-f]{1,8}/0x[0-9a-f]{1,8}(?: \[[\w-]{1,64}\])?|0x[0-9a-f]{1,16})",
                     re.ASCII)
_LINES = EventLines(_HEADER, PROBES, MAX_LINE, lost="the pairing would be guessed",
                    too_long="a line longer than any event of these probes",
                    not_event="not an event of the young-bit probes")


def parse_hits(text: str, source: str = "young trace") -> list[Hit]:
    """The `trace` file of the instance: one Hit per event, in the file's order."""
    return [_hit(index, m, line, source) for index, (line, m) in enumerate(event_lines(text, source, _LINES))]


def _hit(index: int, m: "re.Match[str]", line: str, source: str) -> Hit:
    func, what, _ = PROBES[m["event"]]
    if m["func"] != func:
        raise GuestDataError(source, f"{m['event']} fired in {m['func']}, not {func}", line)
    args: dict[str, str] = {}
    rest = m["args"]
    # caller is printed last and its symbol may carry a module in brackets: split it off first.
    caller = ""
    if " caller=" in rest:
        rest, _, caller = rest.partition(" caller=")
        if not _SYMBOL.fullmatch(caller):
            raise GuestDataError(source, "a caller that is not a symbol or an address", line)
    for a in _ARG.finditer(rest):
        args[a["key"]] = a["value"]

    def num(key: str, required: bool = True) -> Optional[int]:
        value = args.get(key)
        if value is None or (value == "(fault)" and not required):
            if required:
                raise GuestDataError(source, f"no {key}= in", line)
            return None
        if not _HEX.fullmatch(value):
            raise GuestDataError(source, f"{key}= is not a hex number", line)
        return parse_int(value, source, base=16, lo=0, hi=U64_MAX)

    primary = what in PRIMARIES
    if primary and not caller:
        raise GuestDataError(source, "a primary young-bit call without its caller", line)
    mm = num("mm")
    start = num("addr" if primary else "start", required=what != RELEASE)
    end = num("end") if what in ("clear_young", "clear_flush_young") else 0
    assert mm is not None and end is not None
    return Hit(index=index, pid=parse_int(m["pid"], source, lo=0, hi=PID_MAX),
               cpu=parse_int(m["cpu"], source, lo=0, hi=8191), time_s=float(m["ts"]), what=what, mm=mm,
               start=start or 0, end=end, entry=num("entry", required=False) if primary else None,
               caller=caller, comm=m["comm"].strip())


@dataclass
class YoungTrace:
    """start() places the probes, collect() returns the hits since the last collection, stop() the
    last ones and removes the probes.  Always stop() (or leave the `with` block)."""

    guest: Guest
    args: str = ""                        # "btf" or "6.1": how the primaries read vma->vm_mm
    unavailable: str = ""                 # why the trace could not be set up (then stop() returns [])
    overruns: int = 0
    active: bool = False                  # the probes are in place

    def start(self) -> None:
        result = self.guest.run(["sh", "-c", SETUP_SCRIPT])
        words = result.stdout.split()
        if result.exit_status == 3 and words[:2] == ["args", "none"]:
            self.unavailable = ("the kernel's kprobes cannot read vma->vm_mm through BTF and its struct "
                                "vm_area_struct layout is not one checked here")
            self.guest.run(["sh", "-c", TEARDOWN_SCRIPT])
            return
        if not result.ok:
            detail = (result.stderr or result.stdout).strip()[-300:]
            self.guest.run(["sh", "-c", TEARDOWN_SCRIPT])
            raise GuestError(f"setting up the young-bit kprobes failed: {detail}")
        if words[:1] != ["args"] or len(words) != 2 or words[1] not in ("btf", "6.1"):
            raise GuestDataError("young trace set-up", "expected 'args btf' or 'args 6.1'", result.stdout)
        self.args = words[1]
        self.active = True

    def stop(self) -> list[Hit]:
        if not self.active:
            return []
        try:
            return self.collect()
        finally:
            self._teardown()

    def _teardown(self) -> None:
        self.active = False
        self.guest.run(["sh", "-c", TEARDOWN_SCRIPT])

    def collect(self) -> list[Hit]:
        if not self.active:
            return []
        out = self.guest.check(["sh", "-c", COLLECT_SCRIPT], timeout=120)
        self.overruns, trace = split_collection(out, INSTANCE, STATS_END, "young trace")
        if self.overruns:
            raise GuestError(f"the young-bit trace lost {self.overruns} events to a full buffer; the pairing "
                             f"cannot be judged")
        return parse_hits(trace, f"{INSTANCE}/trace")

    def __enter__(self) -> "YoungTrace":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self._teardown()
