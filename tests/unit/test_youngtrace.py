"""The young-bit trace's guest side: its scripts keep to their own instance and group, and its parser
reads what ftrace printed in 6.1 and 6.12 guests (tests/data/young, collected with these scripts)
and refuses anything else."""

import subprocess
from pathlib import Path

import pytest

from harness import coverage
from harness.guest_data import GuestDataError
from harness.kvm import ftrace as kvm_ftrace
from harness.model.versions import features_for
from harness.model.young import PRIMARIES, judge_young, mm_of
from harness.scenarios import youngtrace as yt

DATA = Path(__file__).parent.parent / "data" / "young"
V61, V612 = features_for((6, 1)), features_for((6, 12))


def trace_of(name: str) -> str:
    return (DATA / name).read_text().partition(yt.STATS_END + "\n")[2]


@pytest.mark.parametrize("script", [yt.SETUP_SCRIPT, yt.COLLECT_SCRIPT, yt.TEARDOWN_SCRIPT])
def test_the_scripts_are_shell(script):
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0


def test_own_instance_and_group_apart_from_coverage_and_kvm():
    assert yt.INSTANCE != coverage.INSTANCE and yt.GROUP != coverage.GROUP
    assert yt.GROUP != "nh" and not any(f"nh/{name}" in yt.SETUP_SCRIPT for name in kvm_ftrace.KPROBES)
    for script in (yt.SETUP_SCRIPT, yt.TEARDOWN_SCRIPT):
        # removes kprobes one by one, by name in its own group: never `echo > kprobe_events`
        assert 'echo > "$T/kprobe_events"' not in script and "-:$G/" in script
        assert "nh-cov" not in script and "nhcov" not in script


def test_setup_reads_vm_mm_through_btf_or_61s_offset_only():
    assert "vma->vm_mm" in yt.PRIMARY_ARGS_BTF and "+16(%di)" in yt.PRIMARY_ARGS_61
    assert "6.1.*)" in yt.SETUP_SCRIPT and 'echo "args none"; exit 3' in yt.SETUP_SCRIPT
    # $stack0 must reach kprobe_events as written, not be expanded by the shell
    assert "'" + yt.PRIMARY_ARGS_BTF + "'" in yt.SETUP_SCRIPT


def test_6_1_reclaim_trace():
    hits = yt.parse_hits(trace_of("6.1-reclaim.txt"))
    primaries = [h for h in hits if h.primary]
    assert primaries and {h.what for h in primaries} == {"ptep_clear_flush_young"}
    assert {h.caller_name for h in primaries} == {"folio_referenced_one"}
    first = primaries[0]
    follower = hits[first.index + 1]
    assert follower.what == "clear_flush_young" and (follower.start, follower.end) == (first.start, first.start + 4096)
    assert follower.mm == first.mm          # 6.1's vm_mm offset read the right field
    mm = mm_of(hits, 149)
    assert mm == first.mm
    j = judge_young(hits, V61, mms={mm})
    assert j.findings == [] and sum(j.paired.values()) == len(primaries)


def test_6_12_reclaim_trace_with_mglru_and_madv_cold():
    hits = yt.parse_hits(trace_of("6.12-reclaim.txt"))
    callers = {h.caller_name for h in hits if h.primary}
    assert {"walk_pud_range", "lru_gen_look_around", "walk_pmd_range_locked",
            "madvise_cold_or_pageout_pte_range"} <= callers
    cold = next(h for h in hits if h.caller_name == "madvise_cold_or_pageout_pte_range")
    assert cold.what == "pmdp_test_and_clear_young" and cold.young
    j = judge_young(hits, V612, mms={mm_of(hits, 197)})
    assert j.findings == []
    assert j.paired["lru_gen_look_around"] and j.paired["walk_pmd_range_locked"]
    assert sum(j.allowed.values()) == 1         # MADV_COLD on the THP


def test_6_12_damon_trace_unaligned_sampling_addresses():
    hits = yt.parse_hits(trace_of("6.12-damon.txt"))
    mk = [h for h in hits if h.primary]
    assert {h.caller_name for h in mk} == {"damon_ptep_mkold", "damon_pmdp_mkold"}
    assert any(h.start % 4096 for h in mk)      # DAMON's sampling address is any byte
    tested = [h for h in hits if h.what == "test_young"]
    assert tested and all(h.end == 0 for h in tested)
    j = judge_young(hits, V612, mms={mm_of(hits, 198)})
    assert j.findings == [] and set(j.paired) == {"damon_ptep_mkold", "damon_pmdp_mkold"}


LINE = ("           mmops-199     [000] ...1.     4.327572: yp_pte: (ptep_test_and_clear_young+0x4/0x40) "
        "mm=0xff2cfadff53b0000 addr=0x4c9000 entry=0x840000003ff23825 caller=walk_pud_range+0x45a/0x9a0")


def test_one_line_in_full():
    [h] = yt.parse_hits(LINE)
    assert (h.pid, h.cpu, h.comm, h.what, h.mm, h.start) == (199, 0, "mmops", "ptep_test_and_clear_young",
                                                            0xff2cfadff53b0000, 0x4c9000)
    assert h.entry == 0x840000003ff23825 and h.young is True and h.time_s == pytest.approx(4.327572)


def test_an_entry_the_kprobe_could_not_read_is_unknown():
    [h] = yt.parse_hits(LINE.replace("entry=0x840000003ff23825", "entry=(fault)"))
    assert h.entry is None and h.young is None


def test_a_caller_in_a_module_or_unnamed():
    for caller in ("foo+0x1/0x10 [kvm]", "0xffffffffc0001234"):
        [h] = yt.parse_hits(LINE.replace("walk_pud_range+0x45a/0x9a0", caller))
        assert h.caller == caller


@pytest.mark.parametrize("bad", [
    LINE.replace("yp_pte", "yp_other"),                        # not one of ours
    LINE.replace("(ptep_test_and_clear_young", "(pmdp_test_and_clear_young"),   # event in another function
    LINE.replace("mm=0xff2cfadff53b0000 ", ""),                 # no mm
    LINE.replace("addr=0x4c9000", "addr=12"),                   # not hex
    LINE.replace(" caller=walk_pud_range+0x45a/0x9a0", ""),     # a primary without its caller
    LINE.replace("walk_pud_range+0x45a/0x9a0", "$(reboot)"),
    LINE + "x" * 2000,
    "garbage",
    "CPU:0 [LOST 12 EVENTS]",
])
def test_what_ftrace_does_not_print_is_an_error(bad):
    with pytest.raises(GuestDataError):
        yt.parse_hits(bad)


def test_every_primary_probe_is_a_primary_of_the_rule():
    assert {what for _, what, args in yt.PROBES.values() if not args} == set(PRIMARIES)
