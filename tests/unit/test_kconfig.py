"""The kernel's configuration as a feature source: parsing, requirements, skip reasons, the fragment."""

from pathlib import Path

import pytest

from harness.kconfig import parse_kconfig, skip_reason

REPO = Path(__file__).resolve().parent.parent.parent
TEXT = """#
# Automatically generated file; DO NOT EDIT.
CONFIG_KSM=y
CONFIG_KVM=m
# CONFIG_KVM_INTEL is not set
CONFIG_KVM_AMD=m
CONFIG_HZ=250
CONFIG_LOCALVERSION="-nh"
# CONFIG_MEMCG is not set
"""


def test_values_modules_and_unset_options():
    c = parse_kconfig(TEXT, "tree/.config")
    assert c.value("CONFIG_HZ") == "250" and c.value("CONFIG_LOCALVERSION") == '"-nh"'
    assert c.enabled("CONFIG_KSM") and c.enabled("CONFIG_KVM") and not c.enabled("CONFIG_KVM_INTEL")
    assert not c.enabled("CONFIG_MEMCG") and not c.enabled("CONFIG_ZRAM") and not c.enabled("CONFIG_HZ")


def test_requirements_and_alternatives():
    c = parse_kconfig(TEXT, "x")
    assert c.missing(("CONFIG_KSM", "CONFIG_KVM_AMD|CONFIG_KVM_INTEL")) == []
    assert c.missing(("CONFIG_MEMCG", "CONFIG_KVM_INTEL|CONFIG_ZRAM", "CONFIG_KSM")) == \
        ["CONFIG_MEMCG", "CONFIG_KVM_INTEL|CONFIG_ZRAM"]


@pytest.mark.parametrize("missing, reason", [
    (["CONFIG_KSM"], "CONFIG_KSM is not set"),
    (["CONFIG_KVM_AMD|CONFIG_KVM_INTEL"], "neither CONFIG_KVM_AMD nor CONFIG_KVM_INTEL is set"),
    (["CONFIG_A|CONFIG_B|CONFIG_C", "CONFIG_D"], "none of CONFIG_A, CONFIG_B, CONFIG_C is set; CONFIG_D is not set"),
])
def test_skip_reasons_name_the_option(missing, reason):
    assert skip_reason(missing) == reason


def test_a_later_line_wins_as_in_kconfig():
    c = parse_kconfig("CONFIG_KSM=y\n# CONFIG_KSM is not set\nCONFIG_ZRAM=n\n", "x")
    assert not c.enabled("CONFIG_KSM") and not c.enabled("CONFIG_ZRAM")


def test_the_fragment_has_every_option_a_scenario_declares():
    from harness.scenarios import SCENARIOS
    fragment = parse_kconfig((REPO / "configs" / "kernel.config").read_text(), "configs/kernel.config")
    declared = {option for s in SCENARIOS.values() for need in s.needs for option in need.split("|")}
    assert declared and not {o for o in declared if not fragment.enabled(o)}


def test_every_scenario_declares_what_it_needs():
    from harness.scenarios import SCENARIOS
    for name, s in SCENARIOS.items():
        assert isinstance(s.needs, tuple) and all(n.startswith("CONFIG_") for need in s.needs
                                                  for n in need.split("|")), name


# What the verified kernels skip by their configuration: DAMON is off in Debian's 6.1 cloud config.
EXPECTED_SKIPS = {"6.1-cloud-amd64.config": {"damon": ["CONFIG_DAMON_VADDR", "CONFIG_DAMON_PADDR",
                                                        "CONFIG_DAMON_SYSFS"]}}


def test_the_debian_cloud_kernels_run_every_scenario():
    """Recorded from Debian's boot/config-* of the verified kernels: nothing is skipped there but
    EXPECTED_SKIPS."""
    from harness.scenarios import SCENARIOS
    for name in ("6.1-cloud-amd64.config", "6.12-cloud-amd64.config"):
        c = parse_kconfig((REPO / "tests" / "data" / "kconfig" / name).read_text(), name)
        missing = {s: c.missing(sc.needs) for s, sc in SCENARIOS.items() if c.missing(sc.needs)}
        assert missing == EXPECTED_SKIPS.get(name, {}), name


def test_list_for_a_kernel_says_which_scenarios_run_and_why_not(tmp_path, capsys, monkeypatch):
    """A developer's tree with KSM and KVM off: those scenarios are listed as skipped, option named."""
    from harness.cli import main
    from tests.unit.test_kernelspec import bzimage
    image = tmp_path / "arch" / "x86" / "boot" / "bzImage"
    image.parent.mkdir(parents=True)
    image.write_bytes(bzimage(b"6.8.0-nh (gcc) #1"))
    (tmp_path / ".config").write_text((REPO / "configs" / "kernel.config").read_text()
                                      .replace("CONFIG_KSM=y", "# CONFIG_KSM is not set")
                                      .replace("CONFIG_KVM=m", "# CONFIG_KVM is not set"))
    monkeypatch.setenv("NOTIFIER_HARNESS_CACHE", str(tmp_path / "cache"))
    assert main(["list", "--kernel", f"tree:{tmp_path}"]) == 0
    out = capsys.readouterr().out
    rows = dict(line.split(None, 1) for line in out.split(f"kernel tree:{tmp_path}:")[1].splitlines()[2:]
                if line.startswith("  ") and not line.startswith("  outside"))
    assert rows["ksm"] == "skip: CONFIG_KSM is not set"
    assert rows["kvm-ksm"] == "skip: CONFIG_KVM is not set; CONFIG_KSM is not set"
    assert rows["dirty-log"] == "skip: CONFIG_KVM is not set" and rows["mm-basic"] == "run"
    assert "versions the model was read from (verified): 6.1, 6.12" in out
    assert "outside the verified versions; extrapolated: " in out
