"""Seeded random request sequences to minivmm, explored with hypothesis's stateful testing: what the
scenarios that drive minivmm against a model share (dirty-log, memslot).

A scenario's state machine subclasses VmmMachine (its rules, each @watched, send requests through
exchange()); explore() runs it for a number of examples and returns the Exploration, and
conclude() writes exploration.json (and minimal-sequence.txt) and gives the verdict.

A failure is shrunk to a minimal sequence, within a budget: shrinking stops after SHRINK_S, or
SHRINK_RESERVE_S before the scenario's time limit, and the shortest failing sequence found by then
is the repro (a verdict lost to the time limit is worse).  The time to the first failing example
and the shrinking time are recorded apart.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional, TypeVar

from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis.reporting import with_reporter
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from harness.errors import HarnessError
from harness.kvm.vmm import Vmm
from harness.scenarios.base import ScenarioContext
from harness.verdict import Verdict

SHRINK_S = 120.0
SHRINK_RESERVE_S = 45.0

T = TypeVar("T")


class ShrinkStop(AssertionError):
    """Shrinking ran out of time.  Every example from then on fails at once, without a request, so
    hypothesis's shrinker runs out of candidates in no time and its final replay fails the same way;
    the repro is the shortest failing example seen before (Session.shortest)."""


class Abort(BaseException):
    """The harness lost the VMM or the guest: stop exploring at once, nothing to shrink.
    A BaseException so hypothesis does not take it for a property failure."""

    def __init__(self, error: HarnessError):
        super().__init__(str(error))
        self.error = error


@dataclass
class Session:
    """What one scenario run shares with every example: the VMM (with its transcript) and the tallies."""

    vmm: Vmm
    ops: int = 0
    examples: int = 0
    requests: list[str] = field(default_factory=list)   # the current example's requests, in order
    started: float = field(default_factory=time.monotonic)
    # When the first example failed (seconds from the start) and which it was: the time to find a bug,
    # apart from the time to shrink it.
    first_failure_s: Optional[float] = None
    first_failure_example: int = 0
    shrink_until: float = 0.0
    # The shortest failing example so far (what failed, its requests): the repro if shrinking is cut.
    shortest: Optional[tuple[str, list[str]]] = None
    shrink_stopped: bool = False

    def failed(self, what: str) -> None:
        now = time.monotonic()
        if self.first_failure_s is None:
            self.first_failure_s = now - self.started
            self.first_failure_example = self.examples
            deadline = self.vmm.guest.deadline
            self.shrink_until = min(now + SHRINK_S, deadline - SHRINK_RESERVE_S if deadline else now + SHRINK_S)
        if self.shortest is None or len(self.requests) < len(self.shortest[1]):
            self.shortest = (what, list(self.requests))

    def out_of_shrinking_time(self) -> bool:
        return self.first_failure_s is not None and time.monotonic() > self.shrink_until


def watched(method: Callable[..., None]) -> Callable[..., None]:
    """A rule whose failed check is noted in the session (hypothesis catches it to shrink)."""
    @functools.wraps(method)
    def run(self: "VmmMachine", *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except AssertionError as e:
            self.session.failed(str(e))
            raise
    return run


class VmmMachine(RuleBasedStateMachine):
    """One example: its requests go to the session's VMM, and into its transcript under a heading."""

    session: ClassVar[Session]

    def __init__(self) -> None:
        if self.session.out_of_shrinking_time():
            self.session.shrink_stopped = True
            raise ShrinkStop("shrinking ran out of time")
        super().__init__()
        self.session.requests = []
        self.session.examples += 1
        if self.session.vmm.transcript is not None:
            self.session.vmm.transcript.write(f"# example {self.session.examples}\n")

    def exchange(self, op: str, args: dict[str, Any], parse: Callable[[str, dict[str, Any]], T]) -> T:
        """One request, its answer parsed; a lost VMM or an answer that is not what minivmm prints
        stops the exploration."""
        self.session.ops += 1
        try:
            return parse(op, self.session.vmm.call(op, **args))
        except HarnessError as e:
            raise Abort(e) from None
        finally:
            self.session.requests.append(self.session.vmm.last_request)


@dataclass(frozen=True)
class Exploration:
    examples: int
    ops: int
    seconds: float
    failure: Optional[str]           # the property that failed, on the minimal sequence
    first_failure_s: Optional[float]  # when the first failing example failed (the rest is shrinking)
    first_failure_example: int
    report: str                      # hypothesis's account of the minimal sequence
    requests: tuple[str, ...]        # the minimal sequence as sent to minivmm


def explore(machine: type[VmmMachine], session: Session, run_seed: int, examples: int,
            steps: int) -> Exploration:
    """`examples` seeded examples of up to `steps` rules each; a failure shrunk within the budget."""
    # Named without "Machine": hypothesis prints the name in the minimal sequence (state = DirtyLog()).
    test = seed(run_seed)(type(machine.__name__.removesuffix("Machine"), (machine,), {"session": session}))
    lines: list[str] = []
    start = time.monotonic()
    failure = None
    try:
        with with_reporter(lambda text: lines.append(str(text))):
            run_state_machine_as_test(test, settings=settings(
                max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
                suppress_health_check=list(HealthCheck), print_blob=False,
                report_multiple_bugs=False,
                # No explain phase: it replays hundreds of variants of the minimal example on the VM
                # after shrinking, to annotate it, and the minimal sequence is already the repro.
                phases=[p for p in Phase if p is not Phase.explain]))
    except Abort as abort:
        raise abort.error from None
    except Exception as e:
        if session.shrink_stopped and session.shortest is not None:
            # The stop, as hypothesis reports it: ShrinkStop itself, or its account of a failure that
            # did not repeat (the stop) when it replayed the shortest example.
            failure, session.requests = session.shortest
            lines = [f"shrinking stopped after {time.monotonic() - start - (session.first_failure_s or 0):.0f} s "
                     f"(it may take {SHRINK_S:.0f} s, and must end {SHRINK_RESERVE_S:.0f} s before the "
                     f"scenario's time limit): the shortest failing sequence found, {len(session.requests)} "
                     f"requests"]
        elif isinstance(e, AssertionError):
            failure = str(e)
            lines += getattr(e, "__notes__", [])   # hypothesis attaches the falsifying steps as notes
        else:
            raise
    return Exploration(examples=session.examples, ops=session.ops, seconds=time.monotonic() - start,
                       failure=failure, first_failure_s=session.first_failure_s if failure else None,
                       first_failure_example=session.first_failure_example if failure else 0,
                       report="\n".join(lines), requests=tuple(session.requests))


def _rounded(seconds: Optional[float]) -> Optional[float]:
    return round(seconds, 3) if seconds is not None else None


def conclude(ctx: ScenarioContext, result: Exploration, vmm_corrupt: str, notes: tuple[str, ...],
             tallies: Optional[Mapping[str, Any]] = None) -> Verdict:
    """exploration.json (with the scenario's own `tallies`) and, on a failure, minimal-sequence.txt;
    the verdict: a failure names the minimal sequence, and its notes when it was found and how long
    shrinking it took."""
    shrink_s = result.seconds - result.first_failure_s if result.first_failure_s is not None else None
    (ctx.out_dir / "exploration.json").write_text(json.dumps({
        "seed": ctx.seed, "examples": result.examples, "operations": result.ops,
        "seconds": round(result.seconds, 3), "vmm_corrupt": vmm_corrupt, "failure": result.failure,
        "first_failure_s": _rounded(result.first_failure_s), "first_failure_example": result.first_failure_example,
        "shrink_s": _rounded(shrink_s), **(tallies or {}),
        "minimal_requests": list(result.requests) if result.failure else []}, indent=1) + "\n")
    if result.failure is None:
        return Verdict("pass", (), notes)
    sequence = "\n".join(f"    {r}" for r in result.requests)
    (ctx.out_dir / "minimal-sequence.txt").write_text(result.report + "\n")
    if shrink_s is not None:
        notes += (f"first failing example (#{result.first_failure_example}) after {result.first_failure_s:.1f} s, "
                  f"shrunk in {shrink_s:.1f} s",)
    return Verdict("fail", (f"{result.failure}\n  minimal sequence ({len(result.requests)} requests to "
                            f"minivmm, seed {ctx.seed}):\n{sequence}\n  as hypothesis shrank it:\n"
                            + "\n".join(f"    {line}" for line in result.report.splitlines()),), notes)
