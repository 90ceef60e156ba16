"""The young-bit pairing rule (harness/model/young.py): each primary clear on an mm with notifiers is
followed, in the same call, by the secondary callback its wrapper makes; the kernel's by-design
exceptions are allowed with their reason.  Each case with a trace that obeys it and one that breaks it."""

from harness.events import Callback, Record, Subscriber
from harness.model.versions import features_for
from harness.model.young import (ALLOWED, NOT_A_LEAF, Hit, check_probe_saw, judge_young, mm_of)

V61, V612 = features_for((6, 1)), features_for((6, 12))
MM, OTHER_MM = 0xFF00000000001000, 0xFF00000000002000
A = 0x7E0000000000
PID, KSWAPD = 100, 50
YOUNG_PTE, OLD_PTE = 0x8000000001234867, 0x8000000001234847
HUGE_PMD, TABLE_PMD = 0x80000000038008E7, 0x0000000001234067


class Trace:
    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.t = 1.0

    def _add(self, what: str, start: int = 0, end: int = 0, *, pid: int = PID, cpu: int = 0, mm: int = MM,
             entry=None, caller: str = "") -> "Trace":
        self.t += 1e-6
        self.hits.append(Hit(index=len(self.hits), pid=pid, cpu=cpu, time_s=self.t, what=what, mm=mm, start=start,
                             end=end, entry=entry, caller=caller, comm="t"))
        return self

    def primary(self, func: str, addr: int, caller: str, entry: int = YOUNG_PTE, **kw) -> "Trace":
        return self._add(func, addr, entry=entry, caller=f"{caller}+0x10/0x100", **kw)

    def secondary(self, callback: str, start: int, end: int = 0, **kw) -> "Trace":
        return self._add(callback, start, end, **kw)

    def notify(self, func: str, addr: int, caller: str, size: int = 4096, callback: str = "clear_young",
               **kw) -> "Trace":
        """A notify wrapper: the primary, then the secondary for the same address."""
        self.primary(func, addr, caller, **kw)
        kw.pop("entry", None)
        return self.secondary(callback, addr, addr + size, **kw)

    def release(self, pid: int = PID, mm: int = MM) -> "Trace":
        return self._add("release", mm=mm, pid=pid)


def rules(t: Trace, f=V612, **kw) -> list[str]:
    return [x.rule for x in judge_young(t.hits, f, **kw).findings]


def look_around(t: Trace, pages: int, notify_neighbours: bool = True) -> Trace:
    """6.12 reclaim: folio_referenced_one -> lru_gen_look_around ages the folio's PTE, then its
    young neighbours, each through ptep_clear_young_notify (or, broken, without the notifier)."""
    t.notify("ptep_test_and_clear_young", A, "lru_gen_look_around")
    for i in range(1, pages):
        if notify_neighbours:
            t.notify("ptep_test_and_clear_young", A + i * 4096, "lru_gen_look_around")
        else:
            t.primary("ptep_test_and_clear_young", A + i * 4096, "lru_gen_look_around")
    return t.release()


def test_mglru_look_around_reaches_the_notifier_on_6_12():
    assert rules(look_around(Trace(), 8)) == []


def test_mglru_look_around_ageing_neighbours_behind_the_notifiers_back_is_found():
    found = judge_young(look_around(Trace(), 8, notify_neighbours=False).hits, V612).findings
    assert [x.rule for x in found] == ["young-pairing"] * 7
    assert "lru_gen_look_around" in found[0].op and "0x7e0000001000" in found[0].message
    assert found[0].window and any(w.startswith("> ") for w in found[0].window)


def test_6_1_mglru_ages_without_notifier_by_design():
    t = look_around(Trace(), 4, notify_neighbours=False)
    assert rules(t, V61) == []
    j = judge_young(t.hits, V61)
    assert sum(j.allowed.values()) == 4 and "6.12 uses ptep_clear_young_notify" in next(iter(j.allowed))


def test_mglru_walk_on_6_12():
    t = Trace().notify("ptep_test_and_clear_young", A, "walk_pud_range").release()
    assert rules(t) == []
    t = Trace().primary("ptep_test_and_clear_young", A, "walk_pud_range").release()
    assert rules(t) == ["young-pairing"]


def test_folio_referenced_one_clear_flush_young():
    t = Trace().notify("ptep_clear_flush_young", A, "folio_referenced_one", callback="clear_flush_young")
    t.notify("pmdp_clear_flush_young", A + (2 << 20), "folio_referenced_one", size=2 << 20,
             callback="clear_flush_young", entry=HUGE_PMD).release()
    assert rules(t, V61) == [] and rules(t, V612) == []
    broken = Trace().primary("ptep_clear_flush_young", A, "folio_referenced_one").release()
    assert rules(broken, V61) == ["young-pairing"]


def test_the_flush_primitives_own_test_and_clear_is_one_clear():
    t = Trace().primary("ptep_clear_flush_young", A, "folio_referenced_one")
    t.primary("ptep_test_and_clear_young", A, "ptep_clear_flush_young")
    t.secondary("clear_flush_young", A, A + 4096).release()
    assert rules(t) == []


def test_the_secondary_must_be_the_wrappers_callback_and_range():
    wrong_callback = Trace().primary("ptep_test_and_clear_young", A, "damon_ptep_mkold")
    wrong_callback.secondary("clear_flush_young", A, A + 4096).release()
    wrong_range = Trace().primary("pmdp_test_and_clear_young", A, "damon_pmdp_mkold", entry=HUGE_PMD)
    wrong_range.secondary("clear_young", A, A + 4096).release()
    other_mm = Trace().primary("ptep_test_and_clear_young", A, "damon_ptep_mkold")
    other_mm.secondary("clear_young", A, A + 4096, mm=OTHER_MM).release()
    for t in (wrong_callback, wrong_range, other_mm):
        assert rules(t) == ["young-pairing"]


def test_another_tasks_calls_on_the_cpu_do_not_break_a_pair():
    t = Trace().primary("ptep_test_and_clear_young", A, "lru_gen_look_around")
    t.secondary("test_young", A + 4096, pid=KSWAPD)
    t.secondary("clear_young", A, A + 4096).release()
    assert rules(t) == []


def test_a_pair_is_read_per_cpu():
    t = Trace().primary("ptep_test_and_clear_young", A, "walk_pud_range", cpu=1)
    t.notify("ptep_test_and_clear_young", A + 4096, "walk_pud_range", cpu=0)
    t.secondary("clear_young", A, A + 4096, cpu=1).release()
    assert rules(t) == []
    # the secondary on the other CPU is not this call's
    t = Trace().primary("ptep_test_and_clear_young", A, "walk_pud_range", cpu=1)
    t.secondary("clear_young", A, A + 4096, cpu=0).release()
    assert rules(t) == ["young-pairing"]


def test_clear_refs_and_madv_cold_clear_without_notifier_by_design():
    for caller in ("clear_refs_pte_range", "madvise_cold_or_pageout_pte_range"):
        t = Trace().primary("ptep_test_and_clear_young", A, caller).release()
        assert rules(t, V61) == [] and rules(t, V612) == []
    j = judge_young(Trace().primary("ptep_test_and_clear_young", A, "clear_refs_pte_range").release().hits, V612)
    assert list(j.allowed) == [ALLOWED[0].why]


def test_a_pmd_pointing_to_a_pte_table_is_not_a_page():
    t = Trace().primary("pmdp_test_and_clear_young", A, "walk_pmd_range_locked", entry=TABLE_PMD).release()
    assert rules(t) == [] and list(judge_young(t.hits, V612).allowed) == [NOT_A_LEAF]
    huge = Trace().primary("pmdp_test_and_clear_young", A, "walk_pmd_range_locked", entry=HUGE_PMD).release()
    assert rules(huge) == ["young-pairing"]


def test_mms_without_notifiers_are_not_judged():
    t = Trace().primary("ptep_test_and_clear_young", A, "walk_pud_range", mm=OTHER_MM)
    t.notify("ptep_test_and_clear_young", A, "walk_pud_range").release()
    j = judge_young(t.hits, V612)
    assert j.findings == [] and j.unwatched == 1 and j.mms == {MM}


def test_time_window_and_tasks():
    t = Trace().primary("ptep_test_and_clear_young", A, "walk_pud_range")
    late = t.t + 1
    t.notify("ptep_test_and_clear_young", A, "walk_pud_range").release()
    assert rules(t, since=late - 0.5) == []
    assert rules(t, pids={KSWAPD}) == []
    assert rules(t) == ["young-pairing"]


def test_after_its_release_an_mm_is_no_longer_watched():
    t = Trace().notify("ptep_test_and_clear_young", A, "walk_pud_range").release()
    t.primary("ptep_test_and_clear_young", A, "walk_pud_range", pid=KSWAPD)    # the address reused
    assert rules(t) == []


def test_mm_of_a_workload_is_the_one_it_released():
    t = Trace().notify("ptep_test_and_clear_young", A, "walk_pud_range").release(mm=MM)
    assert mm_of(t.hits, PID) == MM and mm_of(t.hits, KSWAPD) is None


def rec(seq: int, callback: Callback, start: int, end: int = 0, pid: int = PID) -> Record:
    return Record(seq=seq, time_ns=seq, start=start, end=end, callback=callback, event=None, blockable=True,
                  ret=0, failed=False, cpu=0, pid=pid, subscriber=Subscriber.PRIMARY)


def test_the_probe_saw_every_young_callback_the_core_was_entered_with():
    t = Trace().notify("ptep_test_and_clear_young", A, "damon_ptep_mkold")
    t.secondary("test_young", A).release()
    records = [rec(1, Callback.CLEAR_YOUNG, A, A + 4096), rec(2, Callback.TEST_YOUNG, A)]
    assert check_probe_saw(t.hits, records, MM) == []
    lost = check_probe_saw(t.hits, records[:1], MM)
    assert [x.rule for x in lost] == ["young-probe"] and "never reached the probe" in lost[0].message
    extra = check_probe_saw(t.hits, records + [rec(3, Callback.CLEAR_YOUNG, A + 4096, A + 8192)], MM)
    assert [x.rule for x in extra] == ["young-probe"] and "entry was not seen" in extra[0].message
