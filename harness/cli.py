"""The `notifier-harness` command line.

Exit codes: 0 all passed, 1 a test failed, 2 a usage or infrastructure error.
A HarnessError becomes one line on stderr and exit 2; anything else escaping
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from harness.config import ACCELERATORS, Config, load_config, with_overrides
from harness.debuglog import kept_in, verbose_to_stderr
from harness.kconfig import skip_reason
from harness.errors import ConfigError, HarnessError, OutputError
from harness.printable import printable
from harness.scenarios import KNOBS, SCENARIOS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"


def _log(message: str) -> None:
    # On a terminal the live progress line is erased first; CI logs get plain lines.  The message may
    # quote the guest: its control characters are shown, never sent to the terminal.
    print(("\x1b[2K" if sys.stdout.isatty() else "") + printable(message), flush=True)


def _progress(line: str) -> None:
    if sys.stdout.isatty():
        print(f"\x1b[2KRUN   {printable(line)} ...", end="\r", flush=True)


def _load(args: argparse.Namespace) -> Config:
    config = load_config(Path(args.config), known_scenarios=KNOBS)
    return with_overrides(config, kernels=args.kernel or (), scenarios=getattr(args, "scenario", None) or (),
                          seed=getattr(args, "seed", None), accel=args.accel, known_scenarios=KNOBS)


def cmd_run(args: argparse.Namespace) -> int:
    from harness.runner import new_run_dir

    config = _load(args)
    if args.workload:
        config = with_workload(config, args.workload, args.workload_args)
    elif args.workload_args:
        raise ConfigError(f"arguments {' '.join(args.workload_args)!r} given without --workload PATH")
    return _execute(config, Path(args.out) if args.out else new_run_dir(), jobs=_jobs(args, len(config.kernels)),
                    **_shard_options(args))


def with_workload(config: Config, path: str, args: Sequence[str]) -> Config:
    """`run --workload PATH [-- ARGS]`: the run is that program under the probe, on the config's kernels."""
    from dataclasses import replace

    from harness.config import parse_config
    data = config.to_dict()
    data["scenarios"] = [{"name": "workload", "path": path, "args": list(args)}]
    source = data.pop("source")
    try:
        workload = parse_config(data, source=source, known_scenarios=KNOBS).scenarios
    except ConfigError as e:
        raise ConfigError(f"--workload: {str(e).split(': ', 1)[-1]}") from None
    return replace(config, scenarios=workload)


def _jobs(args: argparse.Namespace, kernels: int) -> int:
    from harness.runner import default_jobs

    jobs = getattr(args, "jobs", None)
    if jobs is None:
        return default_jobs(kernels)
    if not 1 <= jobs <= 64:
        raise ConfigError(f"--jobs {jobs}: expected 1 to 64")
    return int(jobs)


def _shard_options(args: argparse.Namespace) -> dict[str, Any]:
    """--shard K/N [--durations RUN_DIR]: the Run's shard and the durations that balance it."""
    from harness.rundir import load_run
    from harness.shard import parse_shard

    if not getattr(args, "shard", None):
        if getattr(args, "durations", None):
            raise ConfigError("--durations balances a --shard; give --shard K/N too")
        return {}
    durations = load_run(Path(args.durations)).slot_durations() if args.durations else None
    return {"shard": parse_shard(args.shard), "durations": durations}


def _execute(config: Config, out: Path, on_done: Optional[Callable[[Any], None]] = None, jobs: int = 1,
             **run_options: Any) -> int:
    from harness.runner import Run

    return _finish(Run(config=config, out_dir=out, log=_log, progress=_progress, on_done=on_done, jobs=jobs,
                       **run_options))


def _finish(run: Any) -> int:
    """Execute a Run and say what it came to (its table, where its results are)."""
    from harness.report import summary_table
    from harness.verdict import exit_code

    try:
        results = run.execute()
    finally:
        if run.results:
            _log("\n" + summary_table(run.results))
        _log(f"results: {run.out_dir / 'results.json'}  junit: {run.out_dir / 'junit.xml'}")
    return exit_code(results)


def cmd_repro(args: argparse.Namespace) -> int:
    """Rerun one scenario of a run with the same kernel, settings and seed."""
    from dataclasses import replace

    from harness.rundir import RunDirError, load_run
    from harness.runner import new_run_dir, release_dir, scenario_slots

    target = Path(args.scenario_dir).resolve()
    run_dir = next((p for p in (target.parent, target.parent.parent) if (p / "results.json").is_file()), None)
    if run_dir is None:
        raise RunDirError(f"{args.scenario_dir} is not a scenario of a run: expected RUN_DIR/KERNEL/SCENARIO "
                          f"or RUN_DIR/SCENARIO with RUN_DIR/results.json")
    run = load_run(run_dir)
    # The names only: a run directory written before scenarios declared their knobs lists every knob.
    config = run.config(known_scenarios=frozenset(SCENARIOS))
    # A kernel's directory is named by its release, or by its spec when it never resolved.
    kernels = {release_dir(k.get("release") or k["spec"]): k["spec"] for k in run.document["run"].get("kernels", [])}
    if target.parent == run_dir:          # RUN_DIR/SCENARIO: every kernel of the run
        leaf, specs = target.name, list(config.kernels)
    else:
        leaf = target.name
        spec_text = kernels.get(target.parent.name)
        if spec_text is None:
            raise RunDirError(f"{target.parent.name} is not a kernel of the run in {run_dir}")
        specs = [k for k in config.kernels if k.text == spec_text]
        if not specs:
            raise RunDirError(f"kernel {spec_text} of {run_dir / 'results.json'} is not in its config.json "
                              f"(kernels: {', '.join(k.text for k in config.kernels)})")
    slots = {name: sc for sc, name in scenario_slots(config)}
    if leaf not in slots:
        raise RunDirError(f"{leaf} is not a scenario of the run in {run_dir} (it has: {', '.join(slots)})")
    again = replace(config, kernels=tuple(specs), scenarios=(slots[leaf],))
    if args.accel:
        again = replace(again, machine=replace(again.machine, accel=args.accel))
    out = Path(args.out) if args.out else new_run_dir(prefix="repro-")
    _log(f"repro of {target} (seed {again.seed}) into {out}")

    puts = [PutFile.parse(text) for text in args.put or ()]

    def shell(machine: Any) -> None:
        for put in puts:
            put.copy(machine.ssh)
        _log("shell on the guest after the scenario; exit it to power the guest off")
        machine.ssh.interactive()
    return _execute(again, out, on_done=shell if args.shell else None)


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.compare import compare, format_comparison
    from harness.rundir import load_run

    a, b = load_run(Path(args.run_a)), load_run(Path(args.run_b))
    result = compare(a, b)
    print(printable(format_comparison(result, args.run_a, args.run_b, full=args.full)))
    return 1 if result.regressed else 0


def cmd_merge(args: argparse.Namespace) -> int:
    from harness.merge import merge_runs
    from harness.rundir import load_run

    rows = merge_runs([load_run(Path(p)) for p in args.shards], Path(args.out))
    _log(f"merged {len(args.shards)} shards, {rows} rows: {Path(args.out) / 'results.json'}")
    return 0


def cmd_coverage(args: argparse.Namespace) -> int:
    from harness.coverage import coverage_map
    from harness.rundir import load_run

    print(printable(coverage_map(load_run(Path(args.run_dir)).document)), end="")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """A patch in one command: the same scenarios, seed and machine on the baseline and the patched
    kernel, both runs under one directory, compare's table; 0 no regression, 1 a regression (rows
    the patched run lacks included), 2 when either run could not tell (an error row, no rows)."""
    from dataclasses import replace

    from functools import partial

    from harness.compare import compare, format_comparison
    from harness.kernelspec import parse_kernel_spec
    from harness.rundir import load_run
    from harness.runner import Run, new_run_dir, together

    config = _load(args)
    specs = {}
    for side, text in (("baseline", args.baseline), ("patched", args.patched)):
        try:
            specs[side] = parse_kernel_spec(text)
        except ConfigError as e:
            raise ConfigError(f"--{'baseline' if side == 'baseline' else 'kernel'}: {e}") from None
    out = Path(args.out) if args.out else new_run_dir(prefix="validate-")
    runs = [Run(config=replace(config, kernels=(spec,)), out_dir=out / side, log=_log, progress=_progress)
            for side, spec in specs.items()]
    # Both kernels at once when the host has the cores: each run is one kernel on its own machine.
    codes = together([partial(_finish, run) for run in runs], [run.stop for run in runs], _jobs(args, 2))
    result = compare(load_run(out / "baseline"), load_run(out / "patched"))
    _log("\n" + format_comparison(result, f"{args.baseline} ({out / 'baseline'})",
                                   f"{args.patched} ({out / 'patched'})", full=args.full))
    if result.regressed:
        return 1
    return 2 if 2 in codes else 0


@dataclass(frozen=True)
class PutFile:
    """`--put LOCAL[:GUEST_PATH]`: a host file and where it goes in the guest (default /tmp/NAME)."""

    local: Path
    guest_path: str

    @classmethod
    def parse(cls, text: str) -> "PutFile":
        local, sep, guest = text.rpartition(":")
        if not sep or not guest.startswith("/"):     # a ':' that does not start a guest path is the name's
            local, guest = text, ""
        try:
            path = Path(local).expanduser()
        except RuntimeError:             # ~nosuchuser
            raise ConfigError(f"--put {text}: {local} names no user's home") from None
        if not path.is_file():
            raise ConfigError(f"--put {text}: {local} is not a file")
        return cls(path, guest or f"/tmp/{path.name}")

    def copy(self, ssh: Any) -> None:
        try:
            data, mode = self.local.read_bytes(), self.local.stat().st_mode
        except OSError as e:
            raise ConfigError(f"--put: cannot read {self.local}: {e.strerror}") from None
        ssh.put(data, self.guest_path, mode)
        _log(f"put {self.local} -> {self.guest_path} ({len(data)} bytes, mode {mode & 0o7777:o})")


def cmd_boot(args: argparse.Namespace) -> int:
    from harness.artifacts.cache import cache_root
    from harness.artifacts.prepare import prepare
    from harness.runner import new_run_dir
    from harness.vm.accel import choose_accel, probe_host
    from harness.vm.machine import Machine

    config = _load(args)
    puts = [PutFile.parse(text) for text in args.put or ()]
    prepared = prepare(config.kernels[0], cache_root())
    kernel = prepared.kernel
    accel = choose_accel(config.machine.accel, probe_host())
    _log(f"accel: {accel.accel} ({accel.reason})")
    out = Path(args.out) if args.out else new_run_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write into {out}: {e.strerror}") from None
    with kept_in(out / "harness.log"), Machine(prepared.image, config.machine, accel, out, log=_log) as machine:
        _log(f"booted {kernel.release} in {machine.boot_s:.2f}s ({machine.accel_used}); "
             f"console log: {out / 'console.log'}")
        for put in puts:
            put.copy(machine.ssh)
        if args.command:
            result = machine.ssh.run(args.command, timeout=args.timeout)
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
            if result.dropped:
                _log(f"notifier-harness: the command printed {result.dropped} bytes more than the harness keeps")
            return result.exit_status
        _log("shell on the guest; exit it to power the guest off")
        return machine.ssh.interactive()


def cmd_list(args: argparse.Namespace) -> int:
    from harness.artifacts.cache import cache_root
    from harness.model.versions import verified_label

    print("scenarios:")
    for name, scenario in sorted(SCENARIOS.items()):
        print(f"  {name:24} {scenario.description}")
    config = load_config(Path(args.config), known_scenarios=KNOBS)
    print(f"kernels in {args.config}:")
    for spec in config.kernels:
        print(f"  {spec.text}")
    print(f"versions the model was read from (verified): {verified_label()}")
    for text in args.kernel or ():
        _list_for_kernel(text, cache_root())
    cached = sorted(p.name for p in (cache_root() / "kernels" / "debian").glob("*") if (p / ".complete").exists())
    if cached:
        print("Debian kernels in the cache:")
        for name in cached:
            print(f"  {name}")
    return 0


def _list_for_kernel(text: str, cache: Path) -> None:
    """Per scenario, whether it runs on this kernel or is skipped, and why (its configuration)."""
    from harness.artifacts.kernel import resolve_kernel
    from harness.kernelspec import parse_kernel_spec
    from harness.model.versions import extrapolated, features_for
    from harness.runner import host_kernel_config

    try:
        spec = parse_kernel_spec(text)
    except ConfigError as e:
        raise ConfigError(f"--kernel: {e}") from None
    kernel = resolve_kernel(spec, cache)
    kconfig = host_kernel_config(kernel)
    features = features_for(kernel.version)
    print(f"kernel {text}: {kernel.release}, configuration from "
          f"{kconfig.source if kconfig else 'nowhere on the host (read from /proc/config.gz at boot, if it has it)'}")
    if not features.verified:
        print(f"  outside the verified versions; extrapolated: {'; '.join(extrapolated(features))}")
    for name, scenario in sorted(SCENARIOS.items()):
        missing = kconfig.missing(scenario.needs) if kconfig else []
        print(f"  {name:24} {'skip: ' + skip_reason(missing) if missing else 'run'}")


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench import run_bench
    return run_bench(_load(args), repeats=args.repeats, log=_log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notifier-harness",
                                     description="Boot a kernel under test in QEMU and check its "
                                                 "mmu_notifier behaviour.")
    sub = parser.add_subparsers(dest="command_name", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
        p.add_argument("--kernel", action="append", metavar="SPEC",
                       help="kernel under test, repeatable: debian:6.1, debian:6.12, debian:6.1.0-56, "
                            "tree:PATH, image:PATH,modules=DIR (replaces the config's kernels)")
        p.add_argument("--accel", choices=ACCELERATORS, help="accelerator (default: the config's)")

    run = sub.add_parser("run", help="run scenarios and write results.json and junit.xml")
    common(run)
    run.add_argument("--scenario", action="append", metavar="NAME",
                     help=f"scenario to run, repeatable (known: {', '.join(sorted(SCENARIOS))})")
    run.add_argument("--seed", type=int, help="seed for randomised scenarios (default: the config's)")
    run.add_argument("--jobs", type=int, metavar="N", help="kernels booted and run at once (default: the number "
                                                            "of kernels, at most the host's CPUs)")
    run.add_argument("--shard", metavar="K/N", help="run only part K of N of the (kernel, scenario) slots; "
                                                     "`merge` joins the parts")
    run.add_argument("--durations", metavar="RUN_DIR", help="balance --shard by the durations of an earlier run")
    run.add_argument("--out", metavar="DIR", help="run directory (default: a new runs/<timestamp>-<id>/)")
    run.add_argument("--workload", metavar="PATH",
                     help="run this program (static binary or script) under the probe instead of the config's "
                          "scenarios; its arguments follow --")
    run.add_argument("workload_args", nargs="*", metavar="ARGS", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    boot = sub.add_parser("boot", help="boot the first kernel and open a shell on it")
    common(boot)
    boot.add_argument("--command", metavar="CMD", help="run CMD in the guest instead of a shell; exit with its status")
    boot.add_argument("--timeout", type=float, default=600.0, help="for --command (default: %(default)s s)")
    boot.add_argument("--out", metavar="DIR", help="directory for console.log and the QEMU argv")
    boot.add_argument("--put", action="append", metavar="LOCAL[:GUEST_PATH]",
                      help="copy a file into the guest before the shell or --command, mode kept (repeatable; "
                           "default GUEST_PATH: /tmp/NAME)")
    boot.set_defaults(func=cmd_boot)

    lst = sub.add_parser("list", help="list scenarios and kernels")
    lst.add_argument("-c", "--config", default=str(DEFAULT_CONFIG))
    lst.add_argument("--kernel", action="append", metavar="SPEC",
                     help="also show, per scenario, whether it runs on this kernel or is skipped and why "
                          "(from its configuration; repeatable)")
    lst.set_defaults(func=cmd_list)

    repro = sub.add_parser("repro", help="rerun one scenario of a run: same kernel, settings and seed")
    repro.add_argument("scenario_dir", metavar="RUN_DIR/SCENARIO",
                       help="a scenario's directory in a run (RUN_DIR/KERNEL/SCENARIO), or RUN_DIR/SCENARIO "
                            "for every kernel of the run")
    repro.add_argument("--shell", action="store_true", help="keep the guest up afterwards with a shell into it")
    repro.add_argument("--put", action="append", metavar="LOCAL[:GUEST_PATH]",
                       help="with --shell: copy a file into the guest before the shell (repeatable)")
    repro.add_argument("--accel", choices=ACCELERATORS, help="accelerator (default: the run's)")
    repro.add_argument("--out", metavar="DIR", help="run directory (default: a new runs/repro-<timestamp>-<id>/)")
    repro.set_defaults(func=cmd_repro)

    cmp = sub.add_parser("compare", help="scenarios whose verdict or findings changed between two runs; "
                                         "exit 1 when something regressed")
    cmp.add_argument("run_a", metavar="RUN_A", help="the baseline run directory")
    cmp.add_argument("run_b", metavar="RUN_B", help="the run to compare with it")
    cmp.add_argument("--full", action="store_true", help="every finding, not one line per rule broken at many "
                                                        "addresses")
    cmp.set_defaults(func=cmd_compare)

    mrg = sub.add_parser("merge", help="join the shards of one run (run --shard K/N) into one run directory")
    mrg.add_argument("shards", nargs="+", metavar="RUN_DIR", help="the shards' run directories")
    mrg.add_argument("--out", required=True, metavar="DIR", help="the merged run directory (must not exist)")
    mrg.set_defaults(func=cmd_merge)

    cov = sub.add_parser("coverage", help="per kernel call site of mmu_notifier: the scenarios of a run that "
                                          "exercised it, whether a per-operation rule judged it, or why not")
    cov.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")
    cov.set_defaults(func=cmd_coverage)

    val = sub.add_parser("validate", help="run the same scenarios and seed on a baseline and a patched kernel, "
                                          "then compare; exit 1 on a regression")
    val.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s): "
                                                                         "scenarios, machine, seed")
    val.add_argument("--baseline", required=True, metavar="SPEC", help="the kernel without the patch")
    val.add_argument("--kernel", required=True, dest="patched", metavar="SPEC", help="the kernel with the patch")
    val.add_argument("--scenario", action="append", metavar="NAME", help="scenario to run, repeatable")
    val.add_argument("--seed", type=int, help="seed (default: the config's)")
    val.add_argument("--accel", choices=ACCELERATORS, help="accelerator (default: the config's)")
    val.add_argument("--out", metavar="DIR", help="directory for both runs (default: a new runs/validate-*/)")
    val.add_argument("--full", action="store_true", help="every finding in the table")
    val.add_argument("--jobs", type=int, metavar="N", help="1: one kernel after the other (default: both at once "
                                                            "when the host has 2 CPUs)")
    val.set_defaults(func=cmd_validate, kernel=None)

    bench = sub.add_parser("bench", help="boot-to-ready of the harness against the raw QEMU floor")
    common(bench)
    bench.add_argument("--repeats", type=int, default=5, help="boots per measurement (default: %(default)s)")
    bench.set_defaults(func=cmd_bench)
    for command in sub.choices.values():
        command.add_argument("-v", "--verbose", action="store_true",
                             help="debug lines on stderr: QEMU argv, QMP traffic, SSH commands with status and "
                                  "duration, cache hits and builds (a run keeps them in harness.log anyway)")
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled, `kill`) or SIGHUP (the terminal or the ssh session closed):
    unwound like Ctrl-C, so QEMU, which runs in a session of its own and never sees the signal, is
    shut down and nothing is left behind."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


UNWIND_ON = (signal.SIGTERM, signal.SIGHUP)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        verbose_to_stderr()
    previous = {signum: signal.signal(signum, _terminate) for signum in UNWIND_ON}
    try:
        return int(args.func(args))
    except HarnessError as e:
        print(f"notifier-harness: error: {printable(str(e))}", file=sys.stderr)
        return 2
    except Terminated as e:
        print(f"notifier-harness: terminated by {signal.Signals(e.signum).name}; the guest was shut down",
              file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("notifier-harness: interrupted; the guest was shut down", file=sys.stderr)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
