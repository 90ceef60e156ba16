"""The memslot model, rule by rule (docs/memslot.md): each rule accepts what the kernel must answer
and rejects a wrong answer."""

from __future__ import annotations

import errno as E

import pytest

from harness.model.memslot import (CONTROL_SIZE, LOG_DIRTY_PAGES, PAGE, READONLY, MemslotModel, MmioExit, Region)

ARENA = 0x7F0000000000
G = 1 << 30                      # the GPA window the scenario uses
SMM = 1 << 16                    # address space 1


def model(max_gpa_bits: int = 40, address_spaces: int = 2) -> MemslotModel:
    return MemslotModel(arena_hva=ARENA, arena_size=1024 * PAGE, max_gpa_bits=max_gpa_bits,
                        address_spaces=address_spaces)


def region(slot: int = 1, flags: int = 0, gpa: int = G, pages: int = 2, offset: int = 0,
           size: int | None = None, hva: int | None = None) -> Region:
    return Region(slot, flags, gpa, pages * PAGE if size is None else size, ARENA + offset if hva is None else hva)


def accepts(m: MemslotModel, r: Region, errno: int) -> None:
    """The right errno passes (and is applied); another one is a finding."""
    wrong = E.EEXIST if errno != E.EEXIST else E.EINVAL
    assert model_copy(m).check_region(r, wrong) is not None, f"{r} with {wrong} was not caught"
    assert m.check_region(r, errno) is None


def model_copy(m: MemslotModel) -> MemslotModel:
    c = model(m.max_gpa_bits, m.address_spaces)
    c.slots, c.memory, c.gone = dict(m.slots), dict(m.memory), list(m.gone)
    return c


def with_slot(**kw) -> MemslotModel:
    m = model()
    assert m.check_region(region(**kw), 0) is None
    return m


# --- the argument checks: all EINVAL -------------------------------------------

@pytest.mark.parametrize("bad,why", [
    (region(slot=32764), "KVM_USER_MEM_SLOTS"), (region(slot=32767), "KVM_USER_MEM_SLOTS"),
    (region(slot=0xFFFF), "KVM_USER_MEM_SLOTS"),
    (region(flags=1 << 2), "flags"), (region(flags=1 << 16), "flags"),
    (region(flags=LOG_DIRTY_PAGES | 1 << 31), "flags"),
    (region(size=PAGE + 1), "size"), (region(size=PAGE // 2), "size"),
    (region(gpa=G + 0x800), "GPA 0x40000800 is not page aligned"),
    (region(offset=8), "host address"),
    (region(hva=0xFFFF888000000000), "access_ok"),
    (region(slot=(2 << 16) | 1), "address space 2"), (region(slot=(0xFFFF << 16) | 1), "address space 65535"),
    (region(gpa=(1 << 64) - PAGE, pages=2), "wraps"),
    (region(size=(1 << 31) * PAGE, hva=PAGE), "KVM_MEM_MAX_NR_PAGES"),
])
def test_bad_arguments_are_einval(bad, why):
    """Each argument check refuses with EINVAL, and the finding names the check (the kernel's order
    decides which one when several apply; all give EINVAL)."""
    m = model()
    assert why in m.outcome(bad).why
    accepts(m, bad, E.EINVAL)


def test_too_many_pages_in_user_memory_is_caught_by_access_ok_first():
    assert "access_ok" in model().outcome(region(size=(1 << 31) * PAGE)).why


def test_good_arguments_create():
    for r in (region(), region(flags=LOG_DIRTY_PAGES | READONLY), region(slot=32763), region(slot=SMM | 1)):
        accepts(model(), r, 0)


def test_smm_address_space_needs_the_capability():
    accepts(model(address_spaces=1), region(slot=SMM | 1), E.EINVAL)


def test_a_bad_argument_beats_a_missing_slot():
    """Deleting an id with no slot is EINVAL, and so is a delete with a misaligned GPA: the argument
    checks come first, whatever the slot."""
    accepts(model(), region(pages=0), E.EINVAL)
    m = with_slot()
    accepts(m, region(pages=0, gpa=G + 1), E.EINVAL)
    assert 1 in m.slots                                   # a refused delete deletes nothing


# --- delete, modify ---------------------------------------------------------------

def test_delete_of_an_existing_slot():
    m = with_slot()
    accepts(m, region(pages=0), 0)
    assert 1 not in m.slots


def test_delete_ignores_gpa_and_flags_but_not_their_alignment():
    accepts(with_slot(), region(pages=0, gpa=G + 0x800), E.EINVAL)
    accepts(with_slot(), region(pages=0, flags=1 << 2), E.EINVAL)
    m = with_slot()
    accepts(m, region(pages=0, gpa=G + 64 * PAGE, flags=READONLY), 0)


@pytest.mark.parametrize("change", [dict(pages=3), dict(offset=PAGE), dict(flags=READONLY)])
def test_size_host_address_and_readonly_cannot_change(change):
    accepts(with_slot(), region(**change), E.EINVAL)


def test_readonly_cannot_be_dropped_either():
    accepts(with_slot(flags=READONLY), region(flags=0), E.EINVAL)


def test_same_again_is_a_no_op():
    m = with_slot(flags=LOG_DIRTY_PAGES)
    assert m.outcome(region(flags=LOG_DIRTY_PAGES)).change == "none"
    accepts(m, region(flags=LOG_DIRTY_PAGES), 0)


def test_flags_only_toggles_dirty_logging():
    m = with_slot()
    assert m.outcome(region(flags=LOG_DIRTY_PAGES)).change == "flags"
    accepts(m, region(flags=LOG_DIRTY_PAGES), 0)
    assert m.slots[1].flags == LOG_DIRTY_PAGES


def test_move_keeps_the_slot_and_may_change_logging():
    m = with_slot()
    r = region(gpa=G + 8 * PAGE, flags=LOG_DIRTY_PAGES)
    assert m.outcome(r).change == "move"
    accepts(m, r, 0)
    assert (m.slots[1].gpa, m.slots[1].flags) == (G + 8 * PAGE, LOG_DIRTY_PAGES)


# --- overlap --------------------------------------------------------------------

def test_overlap_with_another_slot_is_eexist():
    m = with_slot(pages=4)
    accepts(m, region(slot=2, gpa=G + 3 * PAGE), E.EEXIST)       # create onto slot 1's last page
    accepts(m, region(slot=2, gpa=G + 4 * PAGE), 0)              # just after it: fine
    accepts(m, region(slot=2, gpa=G + 2 * PAGE), E.EEXIST)       # move onto slot 1


def test_overlap_with_slot_0_is_eexist():
    accepts(model(), region(gpa=CONTROL_SIZE - PAGE), E.EEXIST)
    accepts(model(), region(gpa=0x80000), E.EEXIST)


def test_a_move_may_overlap_its_own_old_range():
    m = with_slot(pages=4)
    accepts(m, region(pages=4, gpa=G + 2 * PAGE), 0)


def test_address_spaces_do_not_overlap_each_other():
    m = with_slot(pages=4)
    accepts(m, region(slot=SMM | 2, gpa=G), 0)
    accepts(m, region(slot=SMM | 3, gpa=0), 0)                   # over slot 0's GPAs, in SMM


def test_unchangeable_fields_beat_the_overlap():
    m = with_slot(pages=2)
    assert m.check_region(region(slot=2, gpa=G + 8 * PAGE), 0) is None
    accepts(m, region(slot=2, gpa=G, pages=3), E.EINVAL)         # resize onto slot 1: EINVAL first


# --- kvm_mmu_max_gfn -------------------------------------------------------------

def test_a_slot_must_end_within_max_gpa_bits():
    top = 1 << 40
    accepts(model(), region(gpa=top - 2 * PAGE), 0)              # ends exactly at the top
    accepts(model(), region(gpa=top - PAGE), E.EINVAL)
    accepts(model(max_gpa_bits=52), region(gpa=top - PAGE), 0)   # without TDP: 52 bits


def test_overlap_beats_max_gfn():
    m = model()
    top = 1 << 40
    assert m.check_region(region(slot=1, gpa=top - 2 * PAGE, pages=2), 0) is None
    accepts(m, region(slot=2, gpa=top - PAGE, pages=2), E.EEXIST)


# --- the L2's loads and stores ----------------------------------------------------

def load(m: MemslotModel, gpas, size=4, fill=0xAABBCCDD):
    return m.expect_load(gpas, size, fill)


def test_no_slot_is_an_mmio_read_of_the_fill():
    values, exits = load(model(), [G, G + 6], size=2)
    assert exits == [MmioExit(G, 2, False), MmioExit(G + 6, 2, False)]
    assert values == [0xCCDD, 0xCCDD]


def test_a_slot_reads_memory_zero_at_first():
    m = with_slot()
    assert load(m, [G, G + PAGE + 4]) == ([0, 0], [])


def test_check_load_rejects_a_read_that_should_have_exited():
    m = with_slot()
    m.check_region(region(pages=0), 0)                   # deleted: G is MMIO again
    problem = m.check_load([G], 4, 7, [0], [])
    assert problem and "MMIO read at 0x40000000" in problem and "was deleted" in problem
    assert m.check_load([G], 4, 7, [7], [MmioExit(G, 4, False)]) is None


def test_check_load_rejects_an_exit_where_a_slot_is():
    m = with_slot()
    problem = m.check_load([G], 4, 7, [7], [MmioExit(G, 4, False)])
    assert problem and "slot 1" in problem and "maps it" in problem


def test_check_load_rejects_wrong_length_or_address():
    m = model()
    assert m.check_load([G], 2, 7, [7], [MmioExit(G, 4, False)]) is not None
    assert m.check_load([G], 2, 7, [7], [MmioExit(G + 2, 2, False)]) is not None
    assert m.check_load([G], 2, 7, [7], [MmioExit(G, 2, True)]) is not None


def test_store_then_load_round_trips_little_endian():
    m = with_slot()
    assert m.check_store([G, G + 4], 4, 0x11223344, []) is None       # value + i to the i-th
    assert load(m, [G, G + 4, G + 1], size=1)[0] == [0x44, 0x45, 0x33]
    assert m.check_load([G, G + 4], 4, 0, [0x11223344, 0x11223345], []) is None
    problem = m.check_load([G, G + 4], 4, 0, [0x11223344, 0], [])
    assert problem and "wrong data at 1 of 2" in problem


def test_store_where_no_slot_is_an_mmio_write_with_its_data():
    m = model()
    exits = m.expect_store([G, G + 2], 2, 0x1FFFF)
    assert exits == [MmioExit(G, 2, True, 0xFFFF), MmioExit(G + 2, 2, True, 0x0000)]
    assert m.check_store([G, G + 2], 2, 0x1FFFF, exits) is None
    assert m.check_store([G], 2, 5, [MmioExit(G, 2, True, 6)]) is not None     # wrong data


def test_readonly_slot_reads_memory_and_turns_writes_into_mmio():
    m = with_slot()
    m.check_store([G], 4, 9, [])
    m.check_region(region(pages=0), 0)
    accepts(m, region(flags=READONLY), 0)                  # the same arena bytes, now read-only
    assert load(m, [G]) == ([9], [])
    assert m.check_store([G], 4, 5, [MmioExit(G, 4, True, 5)]) is None
    assert load(m, [G]) == ([9], [])                       # the write did not land
    problem = m.check_store([G], 4, 5, [])                 # a stale writable mapping
    assert problem and "read-only" in problem


def test_a_moved_slot_brings_its_data_and_leaves_mmio_behind():
    m = with_slot()
    m.check_store([G + PAGE], 4, 42, [])
    accepts(m, region(gpa=G + 16 * PAGE), 0)
    assert load(m, [G + 17 * PAGE]) == ([42], [])
    assert load(m, [G + PAGE])[1] == [MmioExit(G + PAGE, 4, False)]
    problem = m.check_load([G + PAGE], 4, 0, [42], [])
    assert problem and "moved away to 0x40010000" in problem


def test_reflagging_dirty_logging_keeps_the_data():
    m = with_slot()
    m.check_store([G], 4, 3, [])
    accepts(m, region(flags=LOG_DIRTY_PAGES), 0)
    assert m.check_load([G], 4, 0, [3], []) is None
    assert m.check_load([G], 4, 0, [0], []) is not None


def test_a_slot_made_again_over_the_same_arena_bytes_finds_their_data():
    m = with_slot()
    m.check_store([G], 4, 77, [])
    m.check_region(region(pages=0), 0)
    accepts(m, region(slot=2, gpa=G + 8 * PAGE, offset=0), 0)    # same arena bytes, other id and GPA
    assert load(m, [G + 8 * PAGE]) == ([77], [])
    accepts(m, region(slot=3, gpa=G + 12 * PAGE, offset=PAGE), 0)   # other arena bytes: fresh
    assert load(m, [G + 12 * PAGE]) == ([0], [])


def test_two_slots_over_one_arena_offset_alias():
    m = with_slot()
    accepts(m, region(slot=2, gpa=G + 8 * PAGE), 0)
    m.check_store([G + 8 * PAGE + 4], 4, 5, [])
    assert load(m, [G + 4]) == ([5], [])


def test_smm_slots_are_invisible_to_the_l2():
    m = model()
    accepts(m, region(slot=SMM | 1), 0)
    assert load(m, [G])[1] == [MmioExit(G, 4, False)]


def test_an_extra_exit_is_reported():
    m = model()
    problem = m.check_load([G], 4, 1, [1], [MmioExit(G, 4, False), MmioExit(G, 4, False)])
    assert problem and "expects no more exits" in problem
