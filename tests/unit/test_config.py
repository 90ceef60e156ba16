"""Config loading: each bad input gives its exact message."""

from pathlib import Path

import pytest

from harness.config import Config, load_config, parse_config, with_overrides
from harness.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
KNOWN = {"smoke", "other"}


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_default_config_is_6_1_with_every_scenario():
    from harness.scenarios import KNOBS, SCENARIOS, SELF_TESTS, USER_INPUT
    c = load_config(REPO / "configs" / "default.yaml", known_scenarios=KNOBS)
    assert [k.text for k in c.kernels] == ["debian:6.1"]
    assert c.machine.cpus == 2 and c.machine.memory_mib == 2048 and c.machine.accel == "auto"
    assert {s.name for s in c.scenarios} == set(SCENARIOS) - SELF_TESTS - USER_INPUT


def test_matrix_config_has_6_1_and_6_12():
    from harness.scenarios import KNOBS
    c = load_config(REPO / "configs" / "matrix.yaml", known_scenarios=KNOBS)
    assert [k.series for k in c.kernels] == ["6.1", "6.12"]


def test_full_config_parses_into_frozen_dataclasses(tmp_path):
    c = load_config(write(tmp_path, """
kernels: [debian:6.12, "tree:/src/linux"]
machine: {cpus: 4, memory: 1536M, accel: tcg, boot_timeout: 30, kvm_watchdog: 5, cmdline: "nokaslr"}
scenarios: [smoke, {name: other, timeout: 12.5}]
seed: 7
"""), known_scenarios=KNOWN)
    assert isinstance(c, Config)
    assert c.machine.memory_mib == 1536 and c.machine.boot_timeout_s == 30.0 and c.machine.cmdline == "nokaslr"
    assert c.scenarios[1].timeout_s == 12.5 and c.seed == 7
    assert c.kernels[1].kind == "tree" and str(c.kernels[1].path) == "/src/linux"
    with pytest.raises(AttributeError):
        c.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize("text, message", [
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nmachin: {}\n",
     "unknown key 'machin'; valid keys: kernels, machine, scenarios, seed"),
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nmachine: {cpu: 2}\n",
     "unknown key 'machine.cpu'; valid keys in machine: accel, boot_timeout, cmdline, cpus, kvm_watchdog, memory"),
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nmachine: {memory: 2X}\n",
     "machine.memory: '2X' is not valid; expected a size such as 512M or 2G"),
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nmachine: {memory: 64M}\n",
     "machine.memory: '64M' is not valid; the guest needs at least 256M"),
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nmachine: {accel: xen}\n",
     "machine.accel: 'xen' is not valid; expected one of auto, kvm, tcg"),
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nmachine: {cpus: 0}\n",
     "machine.cpus: 0 is not valid; expected an integer from 1 to 64"),
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nmachine: {boot_timeout: -1}\n",
     "machine.boot_timeout: -1 is not valid; expected a positive number of seconds, at most 604800"),
    ("kernels: [debian:6.1]\nscenarios: [nosuch]\n",
     "scenarios[0]: unknown scenario 'nosuch'; valid scenarios: other, smoke"),
    ("kernels: [debian:6.1]\nscenarios: [{name: smoke, timout: 3}]\n",
     "unknown key 'scenarios[0].timout'; valid keys in scenarios[0]: alloc, args, examples, fault, khugepaged_timeout, ksm_pages, ksm_timeout, memcg_max, name, path, probe_corrupt, "
     "reaper_wait, reclaim, steps, timeout, vmm_corrupt"),
    ("kernels: [debian:6.1]\nscenarios: [{name: smoke, memcg_max: 2M}]\n",
     "scenarios[0].memcg_max: '2M' is not valid; expected at least 4M"),
    ("kernels: [debian:6.1]\nscenarios: [{name: smoke, ksm_pages: 1}]\n",
     "scenarios[0].ksm_pages: 1 is not valid; expected an integer from 2 to 65536"),
    ("kernels: [debian:6.1]\nscenarios: [{name: smoke, probe_corrupt: yes}]\n",
     "scenarios[0].probe_corrupt: True is not valid; expected one of off, drop-end, shrink-range"),
    ("kernels: [debian:sid]\nscenarios: [smoke]\n",
     "kernels[0]: kernel spec 'debian:sid': 'sid' is not a Debian kernel series (like 6.1) or version "
     "(like 6.1.0-56 or 6.12.117+deb12)"),
    ("kernels: []\nscenarios: [smoke]\n", "kernels: expected a non-empty list"),
    ("scenarios: [smoke]\n", "missing key 'kernels'"),
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nseed: -1\n",
     "seed: -1 is not valid; expected an integer from 0 to 4294967295"),
    ("- just\n- a list\n", "top level: expected a mapping of keys, got list"),
])
def test_bad_values_name_their_key_path(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path, known_scenarios=KNOWN)
    assert str(e.value) == f"{path}: {message}"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^config file .*/nope.yaml does not exist$"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    path = write(tmp_path, "kernels: [debian:6.1\nscenarios: [smoke]\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: YAML syntax error at line ")
    assert "\n" not in str(e.value)


def test_memory_forms():
    for value, mib in (("2G", 2048), ("2GiB", 2048), ("512M", 512), ("512MB", 512), (1024, 1024)):
        c = parse_config({"kernels": ["debian:6.1"], "scenarios": ["smoke"], "machine": {"memory": value}})
        assert c.machine.memory_mib == mib


def test_overrides_validate_and_keep_scenario_knobs():
    base = parse_config({"kernels": ["debian:6.1"], "scenarios": [{"name": "smoke", "timeout": 9}]},
                        known_scenarios=KNOWN)
    c = with_overrides(base, kernels=["debian:6.12"], scenarios=["smoke", "other"], seed=5, accel="tcg",
                       known_scenarios=KNOWN)
    assert c.kernels[0].series == "6.12" and c.seed == 5 and c.machine.accel == "tcg"
    assert [(s.name, s.timeout_s) for s in c.scenarios] == [("smoke", 9.0), ("other", 300.0)]
    with pytest.raises(ConfigError, match="--scenario: unknown scenario 'bad'"):
        with_overrides(base, scenarios=["bad"], known_scenarios=KNOWN)
    with pytest.raises(ConfigError, match="^--kernel: kernel spec 'x' has no kind"):
        with_overrides(base, kernels=["x"])
    with pytest.raises(ConfigError, match="^--accel: 'vmware' is not valid"):
        with_overrides(base, accel="vmware")


def test_resolved_config_loads_back_as_the_same_config():
    c = parse_config({"kernels": ["debian:6.12"], "machine": {"memory": "1G", "cpus": 3},
                      "scenarios": [{"name": "smoke", "alloc": "64M", "probe_corrupt": "drop-end"}], "seed": 9},
                     known_scenarios=KNOWN)
    data = c.to_dict()
    source = data.pop("source")
    assert parse_config(data, source=source, known_scenarios=KNOWN) == c


KNOBS = {"smoke": frozenset(), "ksm": frozenset({"ksm_pages", "ksm_timeout", "probe_corrupt"})}


@pytest.mark.parametrize("text, message", [
    ("kernels: [debian:6.1]\nseed: 1\nscenarios: [smoke]\nseed: 2\n",
     "key 'seed' given twice, at line 2 and at line 4"),
    ("kernels: [debian:6.1]\nscenarios: [{name: ksm, ksm_pages: 4, ksm_pages: 8}]\n",
     "key 'ksm_pages' given twice, at line 2 and at line 2"),
    ("kernels: [debian:6.1]\nscenarios: [{name: smoke, ksm_pages: 5}]\n",
     "scenarios[0].ksm_pages: scenario 'smoke' does not read 'ksm_pages'; its keys: name, timeout"),
    ("kernels: [debian:6.1]\nscenarios: [{name: smoke, timeout: .nan}]\n",
     "scenarios[0].timeout: nan is not valid; expected a positive number of seconds, at most 604800"),
    ("kernels: [debian:6.1]\nscenarios: [{name: ksm, ksm_timeout: .inf}]\n",
     "scenarios[0].ksm_timeout: inf is not valid; expected a positive number of seconds, at most 604800"),
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nmachine: {cmdline: \"quiet nh.sshkey=ecdsa:AAAA\"}\n",
     "machine.cmdline: 'quiet nh.sshkey=ecdsa:AAAA' is not valid; nh.sshkey= is set by the harness itself"),
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nmachine: {cmdline: \"console=tty0\"}\n",
     "machine.cmdline: 'console=tty0' is not valid; console= is set by the harness itself"),
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nmachine: {cmdline: \"rdinit=/bin/sh\"}\n",
     "machine.cmdline: 'rdinit=/bin/sh' is not valid; rdinit= is set by the harness itself"),
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nmachine: {cmdline: \"quiet\\0x\"}\n",
     "machine.cmdline: 'quiet\\x00x' is not valid; expected one line of kernel command-line arguments without "
     "control characters"),
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nmachine: {cmdline: \"a\\x1bb\"}\n",
     "machine.cmdline: 'a\\x1bb' is not valid; expected one line"),
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nseed: " + "9" * 5000 + "\n", "a value cannot be read"),
    ("kernels: [debian:6.1]\nscenarios: [smoke]\nseed: " + "[" * 5000 + "]" * 5000 + "\n",
     "nested too deeply to be a config"),
])
def test_bad_config_files_are_one_line_and_exit_2(tmp_path, capsys, text, message):
    from harness.cli import main
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path, known_scenarios=KNOBS)
    assert str(e.value).startswith(f"{path}: {message}")
    assert main(["run", "-c", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message.split(";")[0] in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("data, message", [
    (b"kernels: [debian:6.1]\nscenarios: [smoke]\n# \xff\xfe\n", "not UTF-8 text (byte 43: b'\\xff')"),
    (b"kernels: [debian:6.1]\n" + b"#" * (2 << 20), "bytes; a config is at most 1024 KiB"),
])
def test_config_files_that_are_not_text(tmp_path, capsys, data, message):
    from harness.cli import main
    path = tmp_path / "bad.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert message in str(e.value)
    assert main(["run", "-c", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_resolved_config_keeps_only_the_knobs_given():
    c = parse_config({"kernels": ["debian:6.1"], "scenarios": ["smoke", {"name": "ksm", "ksm_pages": 8}]},
                     known_scenarios=KNOBS)
    assert c.to_dict()["scenarios"] == [{"name": "smoke", "timeout": 300.0},
                                        {"name": "ksm", "timeout": 300.0, "ksm_pages": 8}]
    data = c.to_dict()
    assert parse_config(data, source=data.pop("source"), known_scenarios=KNOBS) == c


def test_every_knob_a_scenario_declares_is_a_config_key():
    from harness.config import _SCENARIO_KEYS
    from harness.scenarios import KNOBS as REAL
    assert set().union(*REAL.values()) <= set(_SCENARIO_KEYS)
