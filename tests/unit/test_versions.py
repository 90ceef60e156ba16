from harness.model.versions import GIB, P4D_SIZE, features_for


def test_6_1():
    f = features_for((6, 1))
    assert f.change_pte and f.invalidate_range and not f.arch_invalidate
    assert (f.mprotect_chunk, f.mprotect_level) == (GIB, "pmd")
    assert not f.mglru_clear_young and f.kvm_set_spte_hva and f.verified


def test_6_12():
    f = features_for((6, 12))
    assert not f.change_pte and not f.invalidate_range and f.arch_invalidate
    assert (f.mprotect_chunk, f.mprotect_level) == (P4D_SIZE, "pud")
    assert f.mglru_clear_young and not f.kvm_set_spte_hva and f.verified


def test_thresholds_between_and_beyond():
    assert features_for((6, 5)).invalidate_range and not features_for((6, 6)).invalidate_range
    assert features_for((6, 9)).change_pte and not features_for((6, 10)).change_pte
    assert not features_for((6, 9)).verified and not features_for((7, 0)).verified
