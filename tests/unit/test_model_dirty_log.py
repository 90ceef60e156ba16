"""The dirty-log model, rule by rule (kernel-semantics.md §5): each rule accepts what the kernel
must do and rejects a wrong answer."""

from __future__ import annotations

import errno as E

import pytest

from harness.model.dirty_log import (INITIALLY_SET, LOG_DIRTY_PAGES, MANUAL_PROTECT_ENABLE, DirtyLogModel,
                                     bitmap_bytes, describe, expected_values_problem, pages_of)

MANUAL = MANUAL_PROTECT_ENABLE
INIT = MANUAL_PROTECT_ENABLE | INITIALLY_SET


def bits(*pages: int) -> int:
    return sum(1 << p for p in pages)


def model(npages: int = 100, cap=None, logging: bool = True) -> DirtyLogModel:
    return DirtyLogModel.created(npages, LOG_DIRTY_PAGES if logging else 0, cap)


# --- KVM_ENABLE_CAP ----------------------------------------------------------

@pytest.mark.parametrize("value,flags,err", [
    (0, 0, 0), (1, 0, 0), (3, 0, 0),          # off, on, on + INITIALLY_SET
    (2, 0, E.EINVAL),                         # INITIALLY_SET without ENABLE
    (4, 0, E.EINVAL), (5, 0, E.EINVAL), (7, 0, E.EINVAL),   # bits outside KVM_DIRTY_LOG_MANUAL_CAPS
    (1, 1, E.EINVAL),                         # cap->flags must be 0
])
def test_enable_cap_errno(value, flags, err):
    m = model()
    assert m.enable_cap(value, flags) == err
    assert m.cap == (value if not err else 0)   # a failed enable changes nothing


# --- GET ---------------------------------------------------------------------

@pytest.mark.parametrize("slot,err", [
    (1, 0), (0, E.ENOENT), (7, E.ENOENT), (32763, E.ENOENT), (32764, E.EINVAL),
    ((1 << 16) | 1, E.ENOENT), ((2 << 16) | 1, E.EINVAL),
])
def test_get_errno_by_slot(slot, err):
    assert model().get_errno(slot) == err


def test_get_errno_without_logging_is_enoent():
    assert model(logging=False).get_errno(1) == E.ENOENT


def test_legacy_get_must_report_writes_and_harvests_them():
    m = model()
    m.write([3, 70], 5)
    assert m.get(bits(3, 70)) == []
    assert m.get(0) == []                          # harvested: the bitmap is empty now
    m2 = model()
    m2.write([3, 70], 5)
    m2.get(bits(3, 70))
    assert m2.get(bits(3)) != []                   # a harvested bit cannot come back without a write


def test_get_missing_a_written_page_fails():
    m = model()
    m.write([3, 70], 5)
    problems = m.get(bits(3))
    assert len(problems) == 1 and "must be set" in problems[0] and "{70}" in problems[0]


def test_get_extra_bit_fails_unless_the_page_was_read():
    m = model()
    m.write([3], 5)
    assert "neither written nor read" in m.get(bits(3, 9))[0]
    m = model()
    m.write([3], 5)
    m.read([9])                                   # a read fault may install a writable SPTE: may be dirty
    assert m.get(bits(3, 9)) == []
    m = model()
    m.read([9])
    assert m.get(0) == []                         # ... but need not be


def test_get_bit_beyond_the_slot_fails():
    m = model(npages=100)
    assert "beyond the slot's 100 pages" in m.get(bits(100))[0]


def test_manual_get_does_not_clear():
    m = model(cap=MANUAL)
    m.write([1, 2], 9)
    assert m.get(bits(1, 2)) == []
    assert m.get(bits(1, 2)) == []
    assert m.get(bits(1)) != []


def test_initially_set_fills_the_bitmap_when_logging_starts():
    m = model(npages=100, cap=INIT)
    assert m.get((1 << 100) - 1) == []
    assert model(npages=100, cap=INIT).get((1 << 99) - 1) != []      # one bit short
    assert model(npages=100, cap=MANUAL).get((1 << 100) - 1) != []   # without INITIALLY_SET: empty
    m = model(npages=100, cap=INIT, logging=False)
    m.set_flags(LOG_DIRTY_PAGES)                 # newly enabled later: all ones too
    assert m.get((1 << 100) - 1) == []


def test_toggling_logging_drops_the_bitmap():
    m = model(cap=MANUAL)
    m.write([5], 1)
    m.set_flags(0)
    assert m.get_errno(1) == E.ENOENT
    m.set_flags(LOG_DIRTY_PAGES)
    assert m.get(0) == []                        # a new, empty bitmap: the old write is not in it
    assert m.get(bits(5)) != []


def test_writes_while_logging_is_off_are_not_logged():
    m = model(logging=False)
    m.write([5], 1)
    m.set_flags(LOG_DIRTY_PAGES)
    assert m.get(0) == [] and model(logging=False).get_errno(1) == E.ENOENT
    m = model(logging=False)
    m.write([5], 1)
    m.set_flags(LOG_DIRTY_PAGES)
    assert m.get(bits(5)) != []            # a kernel that logged the write anyway is caught


# --- CLEAR -------------------------------------------------------------------

@pytest.mark.parametrize("slot,first,num,err", [
    (1, 0, 100, 0),                    # the whole slot, ending mid-word: legal
    (1, 64, 36, 0),                    # unaligned num_pages reaching exactly the end
    (1, 0, 64, 0), (1, 0, 0, 0), (1, 64, 0, 0),
    (1, 3, 64, E.EINVAL),              # first_page & 63
    (1, 0, 30, E.EINVAL),              # unaligned num_pages short of the end
    (1, 0, 101, E.EINVAL),             # past the end
    (1, 64, 64, E.EINVAL),             # past the end from an aligned start
    (1, 128, 0, E.EINVAL),             # first_page > npages
    (7, 3, 64, E.EINVAL),              # alignment is checked before the slot lookup ...
    (7, 0, 64, E.ENOENT),              # ... so only an aligned first_page reaches ENOENT
    (0, 0, 64, E.ENOENT),              # the control slot has no dirty bitmap
    (32764, 0, 64, E.EINVAL), ((2 << 16) | 1, 0, 64, E.EINVAL),
])
def test_clear_errno_in_kernel_order(slot, first, num, err):
    assert model(npages=100).clear_errno(slot, first, num) == err


def test_clear_errno_without_logging():
    assert model(logging=False).clear_errno(1, 0, 64) == E.ENOENT
    assert model(logging=False).clear_errno(1, 1, 64) == E.EINVAL


def test_clear_clears_only_requested_and_set_bits():
    m = model(cap=MANUAL)
    m.write([1, 2, 70], 9)
    m.clear(0, 100, bits(1, 5))            # 5 was clean: ignored
    assert m.get(bits(2, 70)) == []
    m2 = model(cap=MANUAL)
    m2.write([1, 2, 70], 9)
    m2.clear(0, 100, bits(1, 5))
    assert m2.get(bits(1, 2, 70)) != []    # a kernel that did not clear 1 is caught


def test_clear_is_relative_to_first_page_and_ignores_bits_past_num_pages_words():
    m = model(npages=200, cap=MANUAL)
    m.write([64, 65, 130], 1)
    m.clear(64, 64, bits(0, 66))           # bit 0 -> page 64; bit 66 lies past the one word asked
    assert m.get(bits(65, 130)) == []


def test_clear_works_without_manual_protect():
    m = model()
    m.write([4], 1)
    m.clear(0, 100, bits(4))
    assert m.get(0) == []


# --- memory ------------------------------------------------------------------

def test_memory_values_write_index_and_dontneed():
    m = model()
    m.write([3, 4], 0x100, index=True)
    assert m.read([3, 4, 5]) == [0x103, 0x104, 0]
    m.dontneed(4, 1)
    assert m.read([3, 4]) == [0x103, 0]


def test_expected_values_problem():
    assert expected_values_problem([1, 2], [5, 0], [5, 0]) is None
    problem = expected_values_problem([1, 2], [5, 0], [5, 7])
    assert problem and "page 2: read 0x7, expected 0x0" in problem
    assert "returned 1 values" in expected_values_problem([1, 2], [5, 0], [5])


def test_helpers():
    assert pages_of(bits(0, 5, 64)) == [0, 5, 64]
    assert describe(bits(1, 2)) == "{1, 2} (2 pages)"
    assert bitmap_bytes(100) == 16 and bitmap_bytes(64) == 8


def test_clear_at_the_very_end_of_an_aligned_slot_is_an_empty_clear():
    assert model(npages=128).clear_errno(1, 128, 0) == 0
    assert model(npages=128).clear_errno(1, 128, 1) == E.EINVAL
