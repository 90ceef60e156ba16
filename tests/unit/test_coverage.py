"""Call-site coverage: ftrace stacks recorded in real guests (tests/data/ftrace), wrong input, the
guest scripts, and the coverage map of a run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.coverage import (COLLECT_SCRIPT, INSTANCE, PROBES, SETUP_SCRIPT, STATS_END, TEARDOWN_SCRIPT, Stack,
                              coverage_map, parse_collect, parse_stacks, parse_trace, sites_hit)
from harness.model.callsites import ENTRY_POINTS

DATA = Path(__file__).parent.parent / "data" / "ftrace"
V61, V612 = (6, 1), (6, 12)
R61, R612 = "6.1.0-57-cloud-amd64", "6.12.117+deb12-cloud-amd64"

# The range sites the recorded workloads reached (mm scenarios' mmops scripts, ksm, aging, memcg-oom
# and a program doing MADV_FREE, mremap, clear_refs, hugetlb, a time namespace, a uprobe, MADV_COLLAPSE,
# PAGEMAP_SCAN, UFFDIO_MOVE and DAMON): all but page_vma_mkclean_one (no block filesystem in the
# guest) and 6.12's unmap_hugepage_range.
SEEN_BOTH = {"__oom_reap_task_mm", "__replace_page", "__split_huge_pmd", "clear_refs_write", "collapse_huge_page",
             "copy_hugetlb_page_range", "copy_page_range", "hugetlb_change_protection", "hugetlb_unshare_pmds",
             "hugetlb_wp", "madvise_free_single_vma", "move_hugetlb_page_tables", "move_page_tables",
             "replace_page", "try_to_migrate_one", "try_to_unmap_one", "unmap_vmas", "wp_page_copy",
             "write_protect_page", "zap_page_range_single"}
SEEN_61 = SEEN_BOTH | {"__unmap_hugepage_range", "change_pmd_range", "collapse_and_free_pmd", "zap_page_range"}
SEEN_612 = SEEN_BOTH | {"change_pud_range", "collapse_pte_mapped_thp", "do_pagemap_scan", "move_pages_huge_pmd",
                        "move_pages_pte", "retract_page_tables"}


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def hit(probe: str = "mn_start", pid: int = 100, cpu: int = 0, ts: float = 1.5, msg: str = "start=0x1000 end=0x2000",
        comm: str = "mmops") -> str:
    func = PROBES[probe][0]
    return f"           {comm}-{pid}     [{cpu:03d}] .....     {ts:.6f}: {probe}: ({func}+0x0/0x190) {msg}"


def stack_header(pid: int = 100, cpu: int = 0, ts: float = 1.5, comm: str = "mmops") -> str:
    return f"           {comm}-{pid}     [{cpu:03d}] .....     {ts:.6f}: <stack trace>"


def frames(*names: str) -> list[str]:
    return [f" => {n}" for n in names]


def block(probe: str = "mn_start", site: str = "zap_page_range_single", **kw) -> list[str]:
    return [hit(probe, **kw), stack_header(**{k: v for k, v in kw.items() if k != "msg"}),
            *frames(PROBES[probe][0], site, "do_syscall_64")]


# --- recorded traces ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, version, seen", [("6.1-range.txt", V61, SEEN_61), ("6.12-range.txt", V612, SEEN_612)])
def test_recorded_range_sites_all_resolve(name, version, seen):
    parsed = parse_collect(recorded(name))
    assert parsed.complete and len(parsed.stacks) == len(seen)
    hits = sites_hit(parsed.stacks, version)
    assert hits.unresolved == {}
    assert set(hits.sites) == seen
    assert {s.probe for s in parsed.stacks} == {"mn_start"}


def test_recorded_young_sites_all_resolve():
    hits = sites_hit(parse_collect(recorded("6.1-young.txt")).stacks, V61)
    assert hits.unresolved == {}
    assert set(hits.sites) == {"folio_referenced_one", "hpage_collapse_scan_pmd", "__collapse_huge_page_isolate"}
    parsed = parse_collect(recorded("6.12-young.txt"))
    hits = sites_hit(parsed.stacks, V612)
    assert hits.unresolved == {}
    assert set(hits.sites) == {"hpage_collapse_scan_pmd", "__collapse_huge_page_isolate", "lru_gen_look_around",
                               "walk_pte_range", "damon_ptep_mkold", "damon_pmdp_mkold", "damon_folio_young_one",
                               "damon_young_pmd_entry"}
    # MGLRU's page-table walk: walk_pte_range inlined into walk_pud_range, a 4 KiB clear_young
    walk = next(s for s in parsed.stacks if "walk_pud_range" in s.frames)
    assert walk.probe == "mn_cy" and walk.size == 4096


def test_a_whole_collection_as_recorded():
    """6.1 mm-basic's mmops script: the stats, every hit with its fetch arguments and its stack."""
    parsed = parse_collect(recorded("6.1-mm-basic.txt"))
    assert parsed.complete and parsed.overruns == 0
    first = parsed.stacks[0]
    assert (first.probe, first.comm, first.pid, first.cpu) == ("mn_start", "mmops", 157, 1)
    assert first.time_s == pytest.approx(3.829563)
    assert first.args["start"] == 0x4C5000 and first.args["end"] == 0x4C6000 and first.args["event"] == 1
    assert first.frames[:2] == ("__mmu_notifier_invalidate_range_start", "wp_page_copy")
    # MADV_DONTNEED of [12K, 32K) of the mapping at 0x7e0000000000: one CLEAR (event 1)
    dontneed = [s for s in parsed.stacks if "zap_page_range_single" in s.frames]
    assert (dontneed[0].args["start"], dontneed[0].args["end"], dontneed[0].args["event"]) == (
        0x7E0000003000, 0x7E0000008000, 1)
    assert sites_hit(parsed.stacks, V61).sites == {"wp_page_copy": 3, "change_pmd_range": 3,
                                                    "zap_page_range_single": 4, "__split_huge_pmd": 3,
                                                    "unmap_vmas": 4}


def test_btf_arguments_print_in_decimal():
    """6.12 fetches the range through BTF: unsigned longs print in decimal, the mm in hex."""
    parsed = parse_collect(recorded("6.12-mm-basic.txt"))
    assert parsed.complete
    first = parsed.stacks[0]
    assert first.args["start"] == 5001216 and first.args["end"] == 5005312 and first.args["mm"] > 1 << 63
    assert sites_hit(parsed.stacks, V612).sites == {"wp_page_copy": 3, "change_pud_range": 3,
                                                     "zap_page_range_single": 4, "__split_huge_pmd": 3,
                                                     "unmap_vmas": 4}


def test_trigger_form_and_other_probes_are_counted_not_trusted():
    """The stacktrace trigger's stacks start in the kprobe handler; the invalidate_range and change_pte
    probes of that session are not coverage probes: their lines and stacks are counted, not used."""
    parsed = parse_trace(recorded("6.1-trigger.txt").partition(STATS_END + "\n")[2])
    assert [s.probe for s in parsed.stacks] == ["mn_start"] * 3
    assert parsed.stacks[0].frames[:5] == ("kprobe_trace_func", "kprobe_dispatcher", "kprobe_ftrace_handler",
                                           "0xffffffffc04c70c8", "__mmu_notifier_invalidate_range_start")
    others = sum(1 for line in recorded("6.1-trigger.txt").splitlines() if ": mn_ir: " in line or ": mn_pte: " in line)
    assert others and parsed.skipped == others and parsed.unpaired == others
    assert sites_hit(parsed.stacks, V61).sites == {"change_pmd_range": 1, "wp_page_copy": 1, "unmap_vmas": 1}


def test_stacks_pair_with_their_cpus_event_when_cpus_interleave():
    """kdamond.1's test_young on CPU 1 is followed by kdamond.0's clear_young on CPU 0, whose stack comes
    first: each stack belongs to the last event of its own CPU."""
    parsed = parse_collect(recorded("6.12-interleaved.txt"))
    assert parsed.skipped == 0 and parsed.unpaired == 0
    for s in parsed.stacks:
        assert s.entry in s.frames
    hits = sites_hit(parsed.stacks, V612)
    assert hits.unresolved == {}
    by_comm = {(s.comm, sites_hit([s], V612).sites.popitem()[0]) for s in parsed.stacks}
    assert ("kdamond.0", "damon_ptep_mkold") in by_comm and ("kdamond.1", "damon_folio_young_one") in by_comm
    assert not any(c == "kdamond.0" and site == "damon_folio_young_one" for c, site in by_comm)


# --- wrong input --------------------------------------------------------------------------------

def test_garbage_lines_are_counted_and_skipped():
    text = "\n".join([
        "# tracer: nop",
        "sh: write error: Device or resource busy",
        " => orphan_frame",                                             # a frame with no stack before it
        *block(),
        stack_header(pid=7, cpu=1),                                     # a stack with no hit before it
        *frames("a", "b"),
        hit(cpu=1, msg="start=0x" + "f" * 40 + " end=banana mm=0x10"),  # arguments that are not numbers
        stack_header(cpu=1),
        " => " + "x" * 300,                                             # not a frame ftrace prints
        " => zap_page_range_single",
        "           mmops-100     [000] .....     1.600000: mn_bogus: (foo) start=1",   # someone else's event
        "\x1b[31m\x00\xff not a line",
        "           mmops-\u0661\u0662     [000] .....     1.650000: mn_start: (x) start=1",   # digits int() would take
        "x" * 5000,
        "           mmops-100     [000] .....     1.700000: tracing_mark_write: run x",
        stack_header(),                                                 # a marker's stack: ignored
        *frames("tracing_mark_write"),
        hit(ts=2.0),                                                    # a hit whose stack never came
    ])
    parsed = parse_trace(text)
    assert len(parsed.stacks) == 3
    assert parsed.stacks[0].frames[1] == "zap_page_range_single"
    assert parsed.stacks[1].args == {"mm": 0x10} and parsed.stacks[1].frames == ("zap_page_range_single",)
    assert parsed.stacks[2].frames == ()
    # the error line, the orphan frame, the long frame, mn_bogus, the binary line, the other digits, the long line
    assert parsed.skipped == 7
    # the stack with no hit, the hit with no stack
    assert parsed.unpaired == 2 and not parsed.complete
    hits = sites_hit(parsed.stacks, V61)
    assert hits.sites == {"zap_page_range_single": 2}
    assert hits.unresolved == {"mn_start (no stack): its stack was lost": 1}


def test_a_hit_replaced_before_its_stack_is_unpaired():
    parsed = parse_trace("\n".join([hit(ts=1.0), *block(ts=1.1)]))
    assert len(parsed.stacks) == 2 and parsed.stacks[0].frames == () and parsed.unpaired == 1


def test_a_stack_of_another_pid_is_not_paired():
    parsed = parse_trace("\n".join([hit(pid=5), stack_header(pid=6), *frames("x")]))
    assert parsed.stacks[0].frames == () and parsed.unpaired == 2 and parsed.skipped == 0


def test_frames_per_stack_are_bounded():
    parsed = parse_trace("\n".join([hit(), stack_header(), *frames(*(f"f{i}" for i in range(200)))]))
    assert len(parsed.stacks[0].frames) == 128 and parsed.skipped == 72


def test_collect_output_without_its_separator_is_not_a_trace():
    text = "\n".join(["overrun: 0", *block()])
    parsed = parse_collect(text)
    assert parsed.stacks == [] and parsed.skipped == len(text.splitlines())


def test_overruns_are_summed_over_cpus():
    stats = "entries: 5\noverrun: 3\ncommit overrun: 0\nentries: 2\noverrun: 4\noverrun: lots\noverrun: \u00b2\n" \
            "dropped events: 1\n"
    parsed = parse_collect(stats + STATS_END + "\n" + "\n".join(block()))
    assert parsed.overruns == 8 and len(parsed.stacks) == 1 and not parsed.complete


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=80), st.sampled_from(block() + block("mn_ty", "hpage_collapse_scan_pmd")
                                                                + [stack_header(cpu=3), " => ", "#", STATS_END])),
                max_size=30))
def test_no_text_makes_the_parser_raise(lines):
    text = "\n".join(lines)
    parsed = parse_collect(text)
    sites_hit(parse_trace(text).stacks, V612)
    assert parsed.overruns >= 0


def test_unresolved_stacks_keep_their_top_frames():
    stacks = parse_stacks("\n".join(block(site="dup_mmap")
                                    + block("mn_cy", "walk_pud_range", cpu=1, msg="mm=0x1 start=0x1000")))
    hits = sites_hit(stacks, V612)
    assert hits.sites == {}
    assert hits.unresolved == {
        "mn_start dup_mmap < do_syscall_64: dup_mmap is none of 6.12's range sites": 1,
        "mn_cy walk_pud_range < do_syscall_64: ambiguous: walk_pud_range hosts walk_pmd_range_locked or "
        "walk_pte_range": 1}
    assert hits.as_result_fields()["callsites_unresolved"] == [
        "1x mn_cy walk_pud_range < do_syscall_64: ambiguous: walk_pud_range hosts walk_pmd_range_locked or "
        "walk_pte_range",
        "1x mn_start dup_mmap < do_syscall_64: dup_mmap is none of 6.12's range sites"]


def test_stack_size_and_counts():
    s = Stack(probe="mn_cy", pid=1, comm="x", cpu=0, time_s=0.0, args={"start": 0x200000, "end": 0x400000},
              frames=("__mmu_notifier_clear_young", "walk_pud_range"), count=3)
    assert s.size == 0x200000 and s.entry == "__mmu_notifier_clear_young"
    assert sites_hit([s], V612).sites == {"walk_pmd_range_locked": 3}
    assert Stack(probe="mn_ty", pid=1, comm="x", cpu=0, time_s=0.0, args={"start": 5}).size is None


# --- the guest scripts --------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh on the host")
@pytest.mark.parametrize("script", [SETUP_SCRIPT, COLLECT_SCRIPT, TEARDOWN_SCRIPT])
def test_scripts_are_valid_shell(script):
    subprocess.run(["sh", "-n", "-c", script], check=True)


def test_scripts_use_one_instance_and_every_probe():
    assert "/instances/nh-cov" in INSTANCE
    for script in (SETUP_SCRIPT, COLLECT_SCRIPT, TEARDOWN_SCRIPT):
        assert INSTANCE in script
    for name, (func, _args) in PROBES.items():
        assert name in SETUP_SCRIPT and func in SETUP_SCRIPT and name in TEARDOWN_SCRIPT
        assert func in ENTRY_POINTS
    # never the wipe that would take KVM's probes (or fail on ours): only our own group is removed
    assert "echo > kprobe_events" not in SETUP_SCRIPT + TEARDOWN_SCRIPT
    assert "options/stacktrace" in SETUP_SCRIPT and "mono > " in SETUP_SCRIPT
    assert COLLECT_SCRIPT.index(STATS_END) < COLLECT_SCRIPT.index('cat "$I/trace"')


# --- the coverage map ---------------------------------------------------------------------------

def row(kernel: str, scenario: str, **fields) -> dict:
    return {"kernel": kernel, "kernel_spec": "debian:x", "scenario": scenario, "verdict": "pass", **fields}


def map_lines(results: list) -> list[str]:
    return coverage_map({"schema": "notifier-harness/results/1", "results": results}).splitlines()


def line_of(lines: list[str], name: str) -> str:
    (found,) = [line for line in lines if f"  {name} " in line]
    return " ".join(found.split())


def test_coverage_map_from_recorded_stacks():
    mm = sites_hit(parse_collect(recorded("6.1-mm-basic.txt")).stacks, V61).as_result_fields()
    young = sites_hit(parse_collect(recorded("6.1-young.txt")).stacks, V61).as_result_fields()
    lines = map_lines([row(R61, "mm-basic", **mm), row(R61, "aging", **young), row(R61, "smoke")])
    assert lines[0] == R61
    assert lines[1] == "  no call-site data from: smoke"
    assert lines[2] == "  range sites: 5 of 25 reachable reached, 4 judged (31 in all)"
    assert line_of(lines, "zap_page_range_single") == "mm/memory.c zap_page_range_single judged mm-basic*"
    assert line_of(lines, "wp_page_copy") == "mm/memory.c wp_page_copy contract only mm-basic"
    assert line_of(lines, "madvise_free_single_vma") == (
        "mm/madvise.c madvise_free_single_vma not reached MADV_FREE on anonymous memory")
    assert line_of(lines, "__split_huge_pud").startswith(
        "mm/huge_memory.c __split_huge_pud unreachable only a PUD-mapped DAX")
    assert "  young sites: 3 of 3 reachable reached, 3 judged (8 in all)" in lines
    assert line_of(lines, "hpage_collapse_scan_pmd").startswith(
        "mm/khugepaged.c hpage_collapse_scan_pmd (test_young) judged aging*")
    assert line_of(lines, "folio_referenced_one").startswith("mm/rmap.c folio_referenced_one (clear_flush_young) "
                                                             "judged aging*")
    assert line_of(lines, "damon_ptep_mkold").endswith("unreachable CONFIG_DAMON is off in Debian's 6.1 cloud config")


def test_coverage_map_per_kernel_with_unresolved_and_bad_rows():
    results = [
        row(R61, "mm-basic", callsites={"unmap_vmas": 4, "change_pmd_range": 1}),
        row(R61, "exit-release", callsites={"unmap_vmas": 2}, callsites_unresolved=["1x mn_start foo < bar: \x1b[2J"]),
        row(R61, "ksm", callsites={"replace_page": 0, "not_a_site": 1, "write_protect_page": True}),
        row(R612, "mm-basic", callsites={"change_pud_range": 2, "page_make_device_exclusive_one": 1}),
        row(R612, "cow", callsites={"copy_page_range": 1}, callsites_unresolved=7),
        row("debian:6.12", "smoke"),
        "not a row",
        {"kernel": R61},
    ]
    text = coverage_map({"results": results})
    lines = text.splitlines()
    assert lines.index(R61) < lines.index(R612)
    lines, sec = lines[:lines.index(R612)], lines[lines.index(R612):]
    assert line_of(lines, "unmap_vmas").endswith("judged mm-basic* exit-release")
    assert "  not a 6.1 call site: not_a_site (from ksm)" in lines
    assert "  stacks that name no call site: 1" in lines
    assert "    exit-release: 1x mn_start foo < bar: \\x1b[2J" in lines     # the guest's escape, shown escaped
    assert "\x1b" not in text
    # 6.12's table: change_pud_range, and a device site a self-built tree reached
    assert line_of(sec, "change_pud_range") == "mm/mprotect.c change_pud_range judged mm-basic*"
    assert line_of(sec, "page_make_device_exclusive_one") == (
        "mm/rmap.c page_make_device_exclusive_one contract only mm-basic")
    assert "  range sites: 2 of 28 reachable reached, 2 judged (34 in all, and 1 the cloud kernels cannot reach)" in sec
    warnings = [line for line in sec if line.startswith("warning: ")]
    assert warnings == [
        f"warning: {R61} ksm: callsites['replace_page'] is not a positive count",
        f"warning: {R61} ksm: callsites['write_protect_page'] is not a positive count",
        f"warning: {R612} cow: callsites_unresolved is not a list of strings",
        "warning: debian:6.12: not a kernel release (the kernel never booted?); smoke left out",
        "warning: result #6 is not an object",
        "warning: result #7 has no kernel or scenario"]


def test_coverage_map_of_a_version_outside_the_tables():
    lines = map_lines([row("6.6.0-test", "mm-basic", callsites={"change_pmd_range": 1})])
    assert lines[0] == "6.6.0-test (not a version the table was read from: 6.6 is shown with 6.1's sites)"
    assert line_of(lines, "change_pmd_range") == "mm/mprotect.c change_pmd_range judged mm-basic*"


def test_coverage_map_of_no_results():
    assert coverage_map({}) == "no results in this document\n"
    assert coverage_map({"results": "x"}) == "no results in this document\n"
