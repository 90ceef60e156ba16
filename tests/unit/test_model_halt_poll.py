"""harness.model.halt_poll, rule by rule: for each, a trace that obeys docs/halt-poll.md and one
that breaks it."""

from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

import pytest

from harness.model.halt_poll import (DEFAULTS, HIST_BUCKETS, HaltPollModel, Params, Phase, PollChange, StatsExpectation,
                                     TraceItem, Wakeup, bucket, check_l2_hlts, check_stats, decide, grown, shrunk)

P = Params(halt_poll_ns=2_000_000, grow=2, grow_start=50_000, shrink=2)


def grow(old: int, new: int, vcpu: int = 0) -> PollChange:
    return PollChange(vcpu=vcpu, new=new, old=old, grow=True)


def shrink(old: int, new: int) -> PollChange:
    return PollChange(vcpu=0, new=new, old=old, grow=False)


def wait(ns: int, valid: bool = True) -> Wakeup:
    return Wakeup(ns=ns, waited=True, valid=valid)


def poll(ns: int) -> Wakeup:
    return Wakeup(ns=ns, waited=False, valid=True)


def phase(items: Sequence[TraceItem], params: Params = P, vm_max: Optional[int] = None, name: str = "t") -> Phase:
    numbered = tuple(type(i)(**{**vars(i), "line": n}) for n, i in enumerate(items))  # type: ignore[arg-type]
    return Phase(name, params, vm_max, numbered)


def rules(model: HaltPollModel, *phases: Phase) -> list[str]:
    for p in phases:
        model.run(p)
    return [f.rule for f in model.findings]


def run(*phases: Phase) -> tuple[HaltPollModel, list[str]]:
    model = HaltPollModel()
    return model, rules(model, *phases)


# --- the arithmetic ---------------------------------------------------------------

@pytest.mark.parametrize("old,params,new", [
    (0, P, 50_000),                                            # from 0: grow_start
    (50_000, P, 100_000),                                      # by the factor
    (20_000, Params(2_000_000, 2, 50_000, 2), 50_000),         # a product below grow_start: grow_start
    (40_000, Params(2_000_000, 0, 50_000, 2), 40_000),         # grow 0: unchanged
    (0, Params(2_000_000, 2, 0, 2), 0),                        # grow_start 0: 0 stays 0
    (0, Params(1_000_000, 2, 3_000_000, 2), 3_000_000),        # grow_start above the max: not capped
    (50_000, Params(2_000_000, 100_000, 50_000, 2), 705_032_704),   # 5e9 wraps modulo 2^32
    (1 << 31, Params(4_000_000, 2, 50_000, 2), 50_000),       # wraps to 0, then grow_start
])
def test_grow_arithmetic(old, params, new):
    assert grown(old, params) == new


@pytest.mark.parametrize("old,params,new", [
    (400_000, P, 200_000),                                     # by the divisor
    (80_000, P, 0),                                            # 40000 is below grow_start: 0
    (400_000, Params(2_000_000, 2, 50_000, 0), 0),             # shrink 0: straight to 0
    (400_000, Params(2_000_000, 2, 50_000, 1), 400_000),       # shrink 1: unchanged
    (1_000_000, Params(1_000_000, 2, 3_000_000, 2), 0),        # grow_start above the max: always 0
    (3, Params(2_000_000, 2, 0, 2), 1),                        # grow_start 0: never floored
])
def test_shrink_arithmetic(old, params, new):
    assert shrunk(old, params) == new


@pytest.mark.parametrize("window,halt_ns,valid,max_ns,want", [
    (100_000, 90_000, True, P.halt_poll_ns, "none"),        # the halt fit the window
    (100_000, 100_000, True, P.halt_poll_ns, "none"),       # exactly: still fits
    (100_000, 3_000_000, True, P.halt_poll_ns, "shrink"),   # a long block
    (0, 3_000_000, True, P.halt_poll_ns, "none"),           # long, but nothing to shrink
    (100_000, 300_000, True, P.halt_poll_ns, "grow"),       # short and the window too small
    (100_000, 2_000_000, True, P.halt_poll_ns, "none"),     # exactly the max: neither
    (2_000_000, 2_500_000, True, 2_000_000, "shrink"),
    (100_000, 50_000, False, P.halt_poll_ns, "shrink"),     # an invalid wakeup shrinks, fitting or not
    (100_000, 50_000, True, 0, "reset"),                    # max 0
])
def test_decision(window, halt_ns, valid, max_ns, want):
    assert decide(window, halt_ns, valid, max_ns) == want


def test_bucket_is_fls64_capped():
    assert [bucket(v) for v in (0, 1, 2, 3, 4, 1 << 40, (1 << 62))] == [0, 1, 2, 2, 3, 31, 31]


def test_defaults_differ_only_in_shrink():
    assert DEFAULTS[(6, 1)][:3] == DEFAULTS[(6, 12)][:3] and (DEFAULTS[(6, 1)][3], DEFAULTS[(6, 12)][3]) == (0, 2)


# --- transitions ---------------------------------------------------------------------

def test_grow_then_fit_then_shrink_passes():
    model, found = run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 100_000), wait(300_000),
                              grow(100_000, 200_000), wait(300_000), grow(200_000, 400_000), wait(300_000),
                              poll(250_000), shrink(400_000, 200_000), wait(20_000_000)]))
    assert found == [] and model.window == 200_000
    assert model.seen["grow"] == 4 and model.seen["none"] == 1 and model.seen["shrink"] == 1


def test_a_wrong_grow_factor_is_hp_grow_naming_the_parameter():
    _, found = run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 150_000), wait(300_000)]))
    assert found == ["hp-grow"]
    model = HaltPollModel()
    model.run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 100_000), wait(300_000)],
                    params=Params(2_000_000, 3, 50_000, 2)))
    assert [f.rule for f in model.findings] == ["hp-grow"]
    assert "halt_poll_ns_grow 3" in model.findings[0].line() and "gives 150000" in model.findings[0].line()


def test_grow_from_0_is_grow_start():
    assert run(phase([grow(0, 50_000), wait(300_000)]))[1] == []
    assert run(phase([grow(0, 10_000), wait(300_000)]))[1] == ["hp-grow"]


def test_grow_0_is_traced_unchanged():
    p = Params(2_000_000, 0, 50_000, 2)
    model, found = run(phase([grow(0, 0), wait(300_000), grow(0, 0), wait(300_000)], params=p))
    assert found == [] and model.seen["grow-unchanged"] == 2
    assert run(phase([grow(0, 50_000), wait(300_000)], params=p))[1] == ["hp-grow"]
    # Untraced is wrong too: grow_halt_poll_ns traces even when it changes nothing.
    assert run(phase([wait(300_000)], params=p))[1] == ["hp-decision"]


def test_grow_start_0_keeps_the_window_at_0():
    p = Params(2_000_000, 2, 0, 2)
    assert run(phase([grow(0, 0), wait(300_000), grow(0, 0), wait(300_000)], params=p))[1] == []
    assert run(phase([grow(0, 50_000), wait(300_000)], params=p))[1] == ["hp-grow"]


def test_grow_start_above_the_max_grows_past_it_then_the_entry_clamps():
    p = Params(1_000_000, 2, 3_000_000, 2)
    model, found = run(phase([grow(0, 3_000_000), wait(300_000), poll(200_000),
                              shrink(1_000_000, 0), wait(20_000_000)], params=p))
    assert found == [] and model.seen["grow-past-max"] == 1 and model.seen["entry-clamp"] == 1
    assert model.seen["shrink-to-0"] == 1
    # A kernel that capped the grow at the max, or shrank from the unclamped window, is wrong.
    assert run(phase([grow(0, 1_000_000), wait(300_000)], params=p))[1] == ["hp-grow"]
    assert run(phase([grow(0, 3_000_000), wait(300_000), shrink(3_000_000, 0), wait(20_000_000)],
                     params=p))[1] == ["hp-old"]


def test_a_wrapped_grow_is_judged_modulo_2_32():
    p = Params(2_000_000, 100_000, 50_000, 2)
    assert run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 705_032_704), wait(300_000)], params=p))[1] == []
    assert run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 4_294_967_295), wait(300_000)],
                     params=p))[1] == ["hp-grow"]


def test_shrink_rules():
    ok = phase([grow(0, 50_000), wait(300_000), grow(50_000, 100_000), wait(300_000), shrink(100_000, 50_000),
                wait(20_000_000), shrink(50_000, 0), wait(20_000_000)])
    model, found = run(ok)
    assert found == [] and model.seen["shrink"] == 1 and model.seen["shrink-to-0"] == 1
    # Below grow_start must be 0, not 25000.
    assert run(phase([grow(0, 50_000), wait(300_000), shrink(50_000, 25_000), wait(20_000_000)]))[1] == ["hp-shrink"]


def test_shrink_0_resets():
    p = Params(2_000_000, 2, 50_000, 0)
    assert run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 100_000), wait(300_000), shrink(100_000, 0),
                      wait(20_000_000)], params=p))[1] == []
    model = HaltPollModel()
    model.run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 100_000), wait(300_000), shrink(100_000, 50_000),
                     wait(20_000_000)], params=p))
    assert [f.rule for f in model.findings] == ["hp-shrink"] and "halt_poll_ns_shrink 0" in model.findings[0].line()


def test_a_long_halt_at_window_0_changes_nothing():
    model, found = run(phase([wait(20_000_000), wait(20_000_000)]))
    assert found == [] and model.seen["long-at-0"] == 2
    assert run(phase([shrink(0, 0), wait(20_000_000)]))[1] == ["hp-decision"]


def test_a_halt_that_fits_the_window_changes_nothing():
    assert run(phase([grow(0, 50_000), wait(30_000), poll(40_000)]))[1] == []
    assert run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 100_000), poll(40_000)]))[1] == ["hp-decision"]


def test_a_missing_or_wrong_kind_of_change_is_hp_decision():
    assert run(phase([wait(300_000)]))[1] == ["hp-decision"]                       # no grow
    assert run(phase([shrink(0, 0), wait(300_000)]))[1] == ["hp-decision"]         # shrink for grow
    assert run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 100_000),
                      wait(20_000_000)]))[1] == ["hp-decision"]                   # grow for shrink


def test_an_invalid_wakeup_shrinks_even_when_it_fit():
    assert run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 100_000), wait(300_000),
                      shrink(100_000, 50_000), wait(10_000, valid=False)]))[1] == []
    assert run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 100_000), wait(300_000),
                      wait(10_000, valid=False)]))[1] == ["hp-decision"]


def test_the_entry_clamp_when_the_max_is_lowered():
    grown_ = phase([grow(0, 50_000), wait(300_000), grow(50_000, 100_000), wait(300_000)],
                   params=Params(2_000_000, 2, 50_000, 1))
    lowered = Params(20_000, 2, 50_000, 1)
    model = HaltPollModel()
    assert rules(model, grown_, phase([shrink(20_000, 0), wait(300_000)], params=lowered)) == []
    assert model.seen["entry-clamp"] == 1
    assert run(grown_, phase([shrink(100_000, 0), wait(300_000)], params=lowered))[1] == ["hp-old"]


def test_max_0_resets_the_window_silently():
    up = phase([grow(0, 50_000), wait(300_000), grow(50_000, 100_000), wait(300_000)])
    zero = Params(0, 2, 50_000, 2)
    model = HaltPollModel()
    assert rules(model, up, phase([wait(300_000)], params=zero), phase([grow(0, 50_000), wait(300_000)])) == []
    assert model.seen["reset"] == 1
    assert run(up, phase([shrink(100_000, 50_000), wait(300_000)], params=zero))[1] == ["hp-decision"]
    # After the reset the next grow starts from 0, not from where the window was.
    assert run(up, phase([wait(300_000)], params=zero),
               phase([grow(100_000, 200_000), wait(300_000)]))[1] == ["hp-old"]


def test_the_vm_cap_is_the_maximum():
    module_small = Params(10_000, 2, 50_000, 2)
    model, found = run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 100_000), wait(300_000)],
                             params=module_small, vm_max=2_000_000))
    assert found == [] and model.seen["over-module-max"] == 2
    # Judged by the module's 10 µs, the first halt was long (no grow) and the second should have
    # clamped and shrunk.
    assert run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 100_000), wait(300_000)],
                     params=module_small))[1] == ["hp-decision", "hp-decision"]
    # A cap of 0: no change at all.
    assert run(phase([wait(300_000)], params=P, vm_max=0))[1] == []
    assert run(phase([grow(0, 50_000), wait(300_000)], params=P, vm_max=0))[1] == ["hp-decision"]


def test_order_rules():
    assert run(phase([grow(0, 50_000), grow(50_000, 100_000), wait(300_000)]))[1] == ["hp-order"]
    assert run(phase([grow(0, 50_000)]))[1] == ["hp-order"]
    assert run(phase([grow(0, 50_000), wait(300_000)]))[1] == []


def test_another_vcpu_is_hp_vcpu():
    assert run(phase([grow(0, 50_000, vcpu=1), wait(300_000)]))[1] == ["hp-vcpu"]


def test_one_wrong_step_is_one_finding():
    """After a finding the model takes the kernel's value: the steps after it are judged from there."""
    _, found = run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 150_000), wait(300_000),
                          grow(150_000, 300_000), wait(400_000), poll(200_000)]))
    assert found == ["hp-grow"]


def test_findings_carry_the_phase_and_the_trace_around():
    model = HaltPollModel()
    model.run(phase([grow(0, 50_000), wait(300_000), grow(50_000, 150_000), wait(300_000)], name="grow-shrink"))
    f = model.findings[0]
    assert f.op == "phase 'grow-shrink'" and any(w.startswith("> 2:") for w in f.window)
    assert "halt of 300000 ns" in f.message and "shorter than max 2000000" in f.message


# --- statistics --------------------------------------------------------------------------

def expectation() -> StatsExpectation:
    """Five halts: unpolled wait 300 µs; polled and waited 400 µs; two successful polls (30 µs and
    40 µs); an unpolled halt that did not wait (20 µs)."""
    want = StatsExpectation()
    want.add(0, wait(300_000))
    want.add(50_000, wait(400_000))
    want.add(50_000, poll(30_000))
    want.add(100_000, poll(40_000))
    want.add(0, poll(20_000))
    return want


def good_stats() -> tuple[dict[str, int], dict[str, list[int]]]:
    stats = {"halt_attempted_poll": 3, "halt_successful_poll": 2, "halt_poll_invalid": 0, "halt_wakeup": 2,
             "halt_poll_success_ns": 70_000, "halt_poll_fail_ns": 50_000, "halt_wait_ns": 650_000}
    hists = {name: [0] * HIST_BUCKETS for name in ("halt_poll_success_hist", "halt_poll_fail_hist", "halt_wait_hist")}
    hists["halt_poll_success_hist"][15] = 1
    hists["halt_poll_success_hist"][16] = 1
    hists["halt_poll_fail_hist"][16] = 1
    hists["halt_wait_hist"][bucket(300_000)] = 1
    hists["halt_wait_hist"][bucket(350_000)] += 1
    return stats, hists


def test_expectation_counts():
    want = expectation()
    assert (want.halts, want.attempted, want.successful, want.waited, want.waited_ns) == (5, 3, 2, 2, 700_000)
    assert want.success_ns_max == 70_000 and want.unpolled_wait_buckets == Counter({bucket(300_000): 1})


def test_consistent_stats_pass():
    stats, hists = good_stats()
    assert check_stats(expectation(), stats, hists, "vm") == []


@pytest.mark.parametrize("name,value,words", [
    ("halt_attempted_poll", 4, "halts that polled"),
    ("halt_successful_poll", 1, "did not wait"),
    ("halt_poll_invalid", 1, "invalid wakeup"),
    ("halt_wait_ns", 650_001, "last 700000 ns"),
    ("halt_poll_fail_ns", 10, "last 700000 ns"),
    ("halt_poll_success_ns", 70_001, "successful polls of the trace lasted"),
    ("halt_wakeup", 1, "fewer wake-ups"),
])
def test_each_stat_that_disagrees_is_hp_stats(name, value, words):
    stats, hists = good_stats()
    stats[name] = value
    found = check_stats(expectation(), stats, hists, "vm")
    assert [f.rule for f in found] == ["hp-stats"] and words in found[0].message and name in found[0].message


def test_bounds_are_bounds():
    stats, hists = good_stats()
    stats["halt_wakeup"] = 9                  # more wake-ups than waits: allowed (kicks while blocked)
    stats["halt_poll_success_ns"] = 30_000    # less than the halts lasted: the loop ended, block did not wait
    assert check_stats(expectation(), stats, hists, "vm") == []


@pytest.mark.parametrize("hist,bucket_,words", [
    ("halt_poll_success_hist", 15, "successful polls"),
    ("halt_poll_fail_hist", 16, "failed polls"),
    ("halt_wait_hist", 20, "waited halts"),
])
def test_histogram_totals(hist, bucket_, words):
    stats, hists = good_stats()
    hists[hist][bucket_] += 1
    found = check_stats(expectation(), stats, hists, "vm")
    assert [f.rule for f in found] == ["hp-stats"] and words in found[0].message


def test_an_unpolled_wait_lands_in_its_own_bucket():
    stats, hists = good_stats()
    b = bucket(300_000)
    hists["halt_wait_hist"][b + 1] += hists["halt_wait_hist"][b]    # same total, the wrong bucket
    hists["halt_wait_hist"][b] = 0
    found = check_stats(expectation(), stats, hists, "vm")
    assert [f.rule for f in found] == ["hp-stats"] and f"halt_wait_hist[{b}]" in found[0].message


def test_missing_stats_and_wrong_bucket_counts():
    stats, hists = good_stats()
    del stats["halt_wait_ns"]
    assert "lack halt_wait_ns" in check_stats(expectation(), stats, hists, "vm")[0].message
    stats, hists = good_stats()
    hists["halt_wait_hist"] = hists["halt_wait_hist"][:16]
    assert "16 buckets" in check_stats(expectation(), stats, hists, "vm")[0].message


def test_halt_exits_against_the_l2():
    assert check_l2_hlts(12, 12, "vm") == []
    found = check_l2_hlts(12, 11, "vm")
    assert [f.rule for f in found] == ["hp-stats"] and "the L2 executed 12 HLTs" in found[0].message
