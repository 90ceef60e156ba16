"""The run configuration: YAML in, one frozen dataclass out, validated at load.

Every error names the file, the key path of the bad value and what is allowed,
so a typo in a CI config costs one read of one line.  Unknown keys are errors,
never ignored: a misspelt `boot_timout` silently falling back to a default is
how a harness lies.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Optional, Sequence, Union

import yaml

from harness.errors import ConfigError
from harness.kernelspec import KernelSpec, parse_kernel_spec

ACCELERATORS = ("auto", "kvm", "tcg")
MIN_MEMORY_MIB = 256
# No config of ours is larger; a bigger file is a mistake (or an attack on the parser).
MAX_CONFIG_BYTES = 1 << 20
# A week: longer is a typo, and a number of seconds must be finite (a NaN limit is no limit).
MAX_SECONDS = 7 * 24 * 3600.0
# Kernel command-line parameters the harness sets itself: the console it reads, the panic
# behaviour it relies on, the init it boots and the key its SSH trusts.  A config may not
# override them (the last nh.sshkey= would win: whoever holds that key gets root in the guest).
OWNED_CMDLINE = ("console", "panic", "rdinit", "init")
OWNED_CMDLINE_PREFIX = "nh."

# The scenarios a config may name: just the names, or each name with the keys it accepts
# besides `name` and `timeout` (harness.scenarios.KNOBS).
KnownScenarios = Union[Collection[str], Mapping[str, Collection[str]]]


@dataclass(frozen=True)
class MachineConfig:
    """How the guest machine is shaped."""

    cpus: int = 2
    memory_mib: int = 2048
    accel: str = "auto"
    boot_timeout_s: float = 120.0
    # Under `auto`, KVM that prints nothing on the console this long is given
    # up for TCG (a paravirtual /dev/kvm can hang a stock kernel silently).
    kvm_watchdog_s: float = 15.0
    cmdline: str = ""  # extra kernel command line, appended


PROBE_CORRUPTIONS = ("off", "drop-end", "shrink-range")
VMM_CORRUPTIONS = ("off", "skip-clear", "flip-bit")
FAULTS = ("none", "panic", "warn", "oops", "oops-locked", "lockup", "hung-task", "hang", "qemu-stop", "qemu-kill", "ssh-cut")


@dataclass(frozen=True)
class ScenarioConfig:
    """One scenario to run, with its own knobs."""

    name: str
    timeout_s: float = 300.0
    # Debug: load the probe with its stream corruption on, to show the oracle catches it.
    probe_corrupt: str = "off"
    # memcg OOM scenarios: the memcg's memory.max, what the workload allocates, and how long
    # the probe keeps the victim's mm after the kill (the reaper's 2 s timer, 10 x 100 ms retries).
    memcg_max_mib: int = 32
    alloc_mib: int = 128
    reaper_wait_s: float = 5.0
    # ksm: identical pages to merge, and how long ksmd has for two full scans.
    ksm_pages: int = 64
    ksm_timeout_s: float = 30.0
    # aging: the region reclaimed through memory.reclaim into zram swap, and how long khugepaged
    # has for two full scans.
    reclaim_mib: int = 16
    khugepaged_timeout_s: float = 30.0
    # fault: what to inject mid-scenario (the harness's own crash handling tests).
    fault: str = "none"
    # dirty-log: random examples (a fresh VM each), steps per example at most, and the VMM's
    # debug corruption (the oracle's self-test: it must make the scenario fail).
    examples: int = 200
    steps: int = 20
    vmm_corrupt: str = "off"
    # workload: a program of the user's (a host file, copied into the guest) and its arguments.
    path: str = ""
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """A whole run: which kernels, which machine, which scenarios, which seed."""

    kernels: tuple[KernelSpec, ...]
    scenarios: tuple[ScenarioConfig, ...]
    machine: MachineConfig = field(default_factory=MachineConfig)
    seed: int = 1
    source: str = "<built-in>"

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as written into a run directory; it loads back as the same Config.  A
        scenario's knobs appear where they differ from the default: the ones it was given."""
        defaults = ScenarioConfig(name="")
        return {
            "source": self.source,
            "kernels": [k.text for k in self.kernels],
            "machine": {key: getattr(self.machine, attr) for key, (attr, _) in _MACHINE_KEYS.items()},
            "scenarios": [{"name": s.name, "timeout": s.timeout_s,
                           **{key: _plain(getattr(s, attr)) for key, (attr, _) in _SCENARIO_KEYS.items()
                              if key != "timeout" and getattr(s, attr) != getattr(defaults, attr)}}
                          for s in self.scenarios],
            "seed": self.seed,
        }


def _plain(value: Any) -> Any:
    """A knob as JSON has it (a tuple of arguments is a list)."""
    return list(value) if isinstance(value, tuple) else value


# --- value parsers: each takes (value, key path) and raises ConfigError -----

def _fail(path: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{path}: {value!r} is not valid; {allowed}")


def _int_in(lo: int, hi: int) -> Callable[[Any, str], int]:
    def parse(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _fail(path, value, f"expected an integer from {lo} to {hi}")
        return value
    return parse


def _seconds(value: Any, path: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not 0 < value <= MAX_SECONDS):
        raise _fail(path, value, f"expected a positive number of seconds, at most {MAX_SECONDS:.0f}")
    return float(value)


_SIZE = re.compile(r"^\s*(\d+)\s*([MmGg])(?:i?[Bb])?\s*$")


def _size_mib(value: Any, path: str, minimum: int, example: str, too_small: str) -> int:
    """`2G`, `2GiB`, `512M` or a bare integer of MiB, at least `minimum` MiB."""
    if isinstance(value, int) and not isinstance(value, bool):
        mib = value
    elif isinstance(value, str) and _SIZE.match(value):
        m = _SIZE.match(value)
        assert m
        mib = int(m.group(1)) * (1024 if m.group(2).lower() == "g" else 1)
    else:
        raise _fail(path, value, f"expected a size such as {example}")
    if mib < minimum:
        raise _fail(path, value, too_small)
    return mib


def parse_memory_mib(value: Any, path: str) -> int:
    """The guest's memory."""
    return _size_mib(value, path, MIN_MEMORY_MIB, "512M or 2G", f"the guest needs at least {MIN_MEMORY_MIB}M")


def parse_accel(value: Any, path: str) -> str:
    if value not in ACCELERATORS:
        raise _fail(path, value, f"expected one of {', '.join(ACCELERATORS)}")
    return str(value)


def _cmdline(value: Any, path: str) -> str:
    if not isinstance(value, str) or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _fail(path, value, "expected one line of kernel command-line arguments without control characters")
    for word in value.split():
        key = word.split("=", 1)[0]
        if key in OWNED_CMDLINE or key.startswith(OWNED_CMDLINE_PREFIX):
            raise _fail(path, value, f"{key}= is set by the harness itself (it owns "
                                     f"{', '.join(k + '=' for k in OWNED_CMDLINE)} and {OWNED_CMDLINE_PREFIX}*)")
    return value


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(value).__name__}")
    return value


def _check_keys(data: Mapping[str, Any], valid: Collection[str], path: str) -> None:
    for key in data:
        if key not in valid:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"unknown key {where!r}; valid keys{' in ' + path if path else ''}: "
                              f"{', '.join(sorted(valid))}")


_MACHINE_KEYS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    # yaml key: (dataclass field, parser)
    "cpus": ("cpus", _int_in(1, 64)),
    "memory": ("memory_mib", parse_memory_mib),
    "accel": ("accel", parse_accel),
    "boot_timeout": ("boot_timeout_s", _seconds),
    "kvm_watchdog": ("kvm_watchdog_s", _seconds),
    "cmdline": ("cmdline", _cmdline),
}

def _one_of(choices: Sequence[str]) -> Callable[[Any, str], str]:
    def parse(value: Any, path: str) -> str:
        if value not in choices:
            raise _fail(path, value, f"expected one of {', '.join(choices)}")
        return str(value)
    return parse


def _host_file(value: Any, path: str) -> str:
    """A file on the host; relative paths are resolved by the caller (against the config's directory)."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise _fail(path, value, "expected the path of a file")
    try:
        absolute = Path(value).expanduser().resolve()
    except (RuntimeError, OSError) as e:
        raise _fail(path, value, f"expected the path of a file ({e})") from None
    if not absolute.is_file():
        raise _fail(path, value, f"expected the path of a file; {absolute} is not one")
    return str(absolute)


def _strings(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                              for v in value):
        raise _fail(path, value, "expected a list of arguments")
    words = tuple(str(v) for v in value)
    if any("\0" in w for w in words):
        raise _fail(path, value, "arguments cannot contain NUL")
    return words


def _mib(value: Any, path: str) -> int:
    """A scenario's size: 32M, 1G or an integer of MiB, at least 4M."""
    return _size_mib(value, path, 4, "32M or 1G", "expected at least 4M")


_SCENARIO_KEYS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "timeout": ("timeout_s", _seconds),
    "probe_corrupt": ("probe_corrupt", _one_of(PROBE_CORRUPTIONS)),
    "memcg_max": ("memcg_max_mib", _mib),
    "alloc": ("alloc_mib", _mib),
    "reaper_wait": ("reaper_wait_s", _seconds),
    "ksm_pages": ("ksm_pages", _int_in(2, 65536)),
    "ksm_timeout": ("ksm_timeout_s", _seconds),
    "reclaim": ("reclaim_mib", _mib),
    "khugepaged_timeout": ("khugepaged_timeout_s", _seconds),
    "fault": ("fault", _one_of(FAULTS)),
    "examples": ("examples", _int_in(1, 100000)),
    "steps": ("steps", _int_in(1, 1000)),
    "vmm_corrupt": ("vmm_corrupt", _one_of(VMM_CORRUPTIONS)),
    "path": ("path", _host_file),
    "args": ("args", _strings),
}

_TOP_KEYS = ("kernels", "machine", "scenarios", "seed")


def _parse_machine(data: Any) -> MachineConfig:
    data = _mapping(data, "machine")
    _check_keys(data, _MACHINE_KEYS, "machine")
    fields = {attr: parse(data[key], f"machine.{key}")
              for key, (attr, parse) in _MACHINE_KEYS.items() if key in data}
    return MachineConfig(**fields)


def _parse_scenario(item: Any, path: str, known: Optional[KnownScenarios]) -> ScenarioConfig:
    if isinstance(item, str):
        item = {"name": item}
    item = _mapping(item, path)
    _check_keys(item, ("name", *_SCENARIO_KEYS), path)
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}.name: missing scenario name")
    if known is not None and name not in known:
        raise ConfigError(f"{path}: unknown scenario {name!r}; valid scenarios: "
                          f"{', '.join(sorted(known))}")
    if isinstance(known, Mapping):
        # Each scenario reads its own knobs: one it does not read would be silently ignored.
        accepted = {"name", "timeout", *known[name]}
        for key in item:
            if key not in accepted:
                raise ConfigError(f"{path}.{key}: scenario {name!r} does not read {key!r}; its keys: "
                                  f"{', '.join(sorted(accepted))}")
    fields = {attr: parse(item[key], f"{path}.{key}")
              for key, (attr, parse) in _SCENARIO_KEYS.items() if key in item}
    return ScenarioConfig(name=name, **fields)


def _nonempty_list(value: Any, path: str) -> Sequence[Any]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: expected a non-empty list")
    return value


def parse_config(data: Any, source: str = "<string>",
                 known_scenarios: Optional[KnownScenarios] = None) -> Config:
    """Validate an already-loaded YAML document."""
    try:
        data = _mapping(data, "top level")
        _check_keys(data, _TOP_KEYS, "")
        for key in ("kernels", "scenarios"):
            if key not in data:
                raise ConfigError(f"missing key {key!r}")
        kernels = []
        for i, text in enumerate(_nonempty_list(data["kernels"], "kernels")):
            try:
                kernels.append(parse_kernel_spec(text))
            except ConfigError as e:
                raise ConfigError(f"kernels[{i}]: {e}") from None
        scenarios = tuple(_parse_scenario(item, f"scenarios[{i}]", known_scenarios)
                          for i, item in enumerate(_nonempty_list(data["scenarios"], "scenarios")))
        machine = _parse_machine(data.get("machine", {}))
        seed = _int_in(0, 2**32 - 1)(data.get("seed", 1), "seed")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return Config(kernels=tuple(kernels), scenarios=scenarios, machine=machine,
                  seed=seed, source=source)


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML says "last wins": `seed: 1`
    then `seed: 2` would run seed 2 with nobody told)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"key {key!r} given twice, at line {seen[key]} and at line {line}")
            seen[key] = line
        return super().construct_mapping(node, deep)


def _read_text(path: Path) -> str:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {len(data)} bytes; a config is at most {MAX_CONFIG_BYTES >> 10} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r})") from None


def load_config(path: Path, known_scenarios: Optional[KnownScenarios] = None) -> Config:
    """Read and validate a YAML config file."""
    text = _read_text(path)
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except ValueError as e:
        # PyYAML builds integers with int(): one of thousands of digits is refused there.
        raise ConfigError(f"{path}: a value cannot be read: {str(e)[:120]}") from None
    return parse_config(data, source=str(path), known_scenarios=known_scenarios)


def with_overrides(config: Config, *, kernels: Sequence[str] = (), scenarios: Sequence[str] = (),
                   seed: Optional[int] = None, accel: Optional[str] = None,
                   known_scenarios: Optional[KnownScenarios] = None) -> Config:
    """Apply CLI flags on top of a loaded config, validating them the same way.

    `--scenario` selects among the config's scenarios (keeping their knobs) and
    falls back to defaults for a scenario the config does not list.
    """
    if kernels:
        specs = []
        for text in kernels:
            try:
                specs.append(parse_kernel_spec(text))
            except ConfigError as e:
                raise ConfigError(f"--kernel: {e}") from None
        config = replace(config, kernels=tuple(specs))
    if scenarios:
        by_name = {s.name: s for s in config.scenarios}
        chosen = tuple(by_name.get(name) or _parse_scenario(name, "--scenario", known_scenarios)
                       for name in scenarios)
        config = replace(config, scenarios=chosen)
    if seed is not None:
        config = replace(config, seed=_int_in(0, 2**32 - 1)(seed, "--seed"))
    if accel is not None:
        config = replace(config, machine=replace(config.machine, accel=parse_accel(accel, "--accel")))
    return config
