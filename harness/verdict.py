"""Verdicts and results: what one scenario on one kernel came to."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Mapping

from harness.printable import printable

Status = Literal["pass", "fail", "error", "skip"]
STATUSES: tuple[Status, ...] = ("pass", "fail", "error", "skip")


@dataclass(frozen=True)
class Verdict:
    """pass, fail (findings say why), error (the harness could not tell), skip (reason in findings)."""

    status: Status
    findings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()   # facts worth reporting that are not findings

    @classmethod
    def from_findings(cls, findings: list[str], notes: list[str] | None = None) -> "Verdict":
        return cls("fail" if findings else "pass", tuple(findings), tuple(notes or ()))


@dataclass(frozen=True)
class Result:
    """One row of results.json."""

    kernel: str          # the release under test, e.g. 6.1.0-56-cloud-amd64
    kernel_spec: str     # what the user asked for, e.g. debian:6.1
    accel: str           # the accelerator actually used
    scenario: str
    verdict: Status
    findings: tuple[str, ...]
    duration_s: float
    seed: int
    notes: tuple[str, ...] = field(default=())
    reports: tuple[str, ...] = field(default=())   # titles of the kernel's reports in the scenario's console
    artifacts: str = ""   # the scenario's directory, relative to the run directory
    # The kernel call sites that opened notifier windows or asked about young bits while it ran, with
    # how often (harness/coverage.py), and the stacks no site of the version's table explains.
    callsites: Mapping[str, int] = field(default_factory=dict)
    callsites_unresolved: tuple[str, ...] = field(default=())

    def printable(self) -> "Result":
        """The same row with every human field's control characters escaped (they come from the guest)."""
        def each(texts: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(printable(t) for t in texts)
        return replace(self, kernel=printable(self.kernel), findings=each(self.findings), notes=each(self.notes),
                       reports=each(self.reports), callsites_unresolved=each(self.callsites_unresolved))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["findings"] = list(self.findings)
        d["notes"] = list(self.notes)
        d["reports"] = list(self.reports)
        d["callsites"] = dict(self.callsites)
        d["callsites_unresolved"] = list(self.callsites_unresolved)
        d["duration_s"] = round(self.duration_s, 3)
        return d


def exit_code(results: list[Result]) -> int:
    """0 all passed (or skipped), 1 a test failed, 2 the harness could not tell."""
    statuses = {r.verdict for r in results}
    if "error" in statuses or not results:
        return 2
    return 1 if "fail" in statuses else 0
