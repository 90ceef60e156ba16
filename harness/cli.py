"""The `notifier-harness` command line.

Exit codes: 0 all passed, 1 a test failed, 2 a usage or infrastructure error.
A HarnessError becomes one line on stderr and exit 2; anything else escaping
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from harness.config import ACCELERATORS, Config, load_config, with_overrides
from harness.errors import HarnessError
from harness.scenarios import SCENARIOS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"


def _log(message: str) -> None:
    print(message, flush=True)


def _load(args: argparse.Namespace) -> Config:
    config = load_config(Path(args.config), known_scenarios=SCENARIOS)
    return with_overrides(config, kernels=args.kernel or (), scenarios=getattr(args, "scenario", None) or (),
                          seed=getattr(args, "seed", None), accel=args.accel, known_scenarios=SCENARIOS)


def cmd_run(args: argparse.Namespace) -> int:
    from harness.report import summary_table
    from harness.runner import Run, new_run_dir
    from harness.verdict import exit_code

    config = _load(args)
    out = Path(args.out) if args.out else new_run_dir()
    run = Run(config=config, out_dir=out, log=_log)
    try:
        results = run.execute()
    finally:
        if run.results:
            _log("\n" + summary_table(run.results))
        _log(f"results: {out / 'results.json'}  junit: {out / 'junit.xml'}")
    return exit_code(results)


def cmd_boot(args: argparse.Namespace) -> int:
    from harness.artifacts.cache import cache_root
    from harness.artifacts.prepare import prepare
    from harness.runner import new_run_dir
    from harness.vm.accel import choose_accel, probe_host
    from harness.vm.machine import Machine

    config = _load(args)
    prepared = prepare(config.kernels[0], cache_root())
    kernel = prepared.kernel
    accel = choose_accel(config.machine.accel, probe_host())
    _log(f"accel: {accel.accel} ({accel.reason})")
    out = Path(args.out) if args.out else new_run_dir()
    with Machine(prepared.image, config.machine, accel, out, log=_log) as machine:
        _log(f"booted {kernel.release} in {machine.boot_s:.2f}s ({machine.accel_used}); "
             f"console log: {out / 'console.log'}")
        if args.command:
            result = machine.ssh.run(args.command, timeout=args.timeout)
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
            return result.exit_status
        _log("shell on the guest; exit it to power the guest off")
        return machine.ssh.interactive()


def cmd_list(args: argparse.Namespace) -> int:
    print("scenarios:")
    for name, scenario in sorted(SCENARIOS.items()):
        print(f"  {name:24} {scenario.description}")
    config = load_config(Path(args.config), known_scenarios=SCENARIOS)
    print(f"kernels in {args.config}:")
    for spec in config.kernels:
        print(f"  {spec.text}")
    from harness.artifacts.cache import cache_root
    cached = sorted(p.name for p in (cache_root() / "kernels" / "debian").glob("*") if (p / ".complete").exists())
    if cached:
        print("Debian kernels in the cache:")
        for name in cached:
            print(f"  {name}")
    return 0


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
    run.add_argument("--out", metavar="DIR", help="run directory (default: a new runs/<timestamp>-<id>/)")
    run.set_defaults(func=cmd_run)

    boot = sub.add_parser("boot", help="boot the first kernel and open a shell on it")
    common(boot)
    boot.add_argument("--command", metavar="CMD", help="run CMD in the guest instead of a shell; exit with its status")
    boot.add_argument("--timeout", type=float, default=600.0, help="for --command (default: %(default)s s)")
    boot.add_argument("--out", metavar="DIR", help="directory for console.log and the QEMU argv")
    boot.set_defaults(func=cmd_boot)

    lst = sub.add_parser("list", help="list scenarios and kernels")
    lst.add_argument("-c", "--config", default=str(DEFAULT_CONFIG))
    lst.set_defaults(func=cmd_list)

    bench = sub.add_parser("bench", help="boot-to-ready of the harness against the raw QEMU floor")
    common(bench)
    bench.add_argument("--repeats", type=int, default=5, help="boots per measurement (default: %(default)s)")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except HarnessError as e:
        print(f"notifier-harness: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("notifier-harness: interrupted; the guest was shut down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
