"""Two runs side by side: which scenarios changed verdict or findings (baseline against patched).

Rows are matched by the kernel's position in each run's config (so baseline
`tree:A` pairs with patched `tree:B`) and the scenario's directory name.
Findings are compared by their first line with what varies between runs of
the same behaviour (record numbers, pids, durations) masked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from harness.rundir import RunDir

_RANK = {"pass": 0, "skip": 0, "fail": 1, "error": 2}
_VARYING = [(re.compile(r"#\d+"), "#N"), (re.compile(r"\bpid \d+"), "pid N"),
            (re.compile(r"\b\d+(\.\d+)?s\b"), "Ns")]
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def normalise(finding: str) -> str:
    line = finding.splitlines()[0] if finding else ""
    for pattern, repl in _VARYING:
        line = pattern.sub(repl, line)
    return line


def collapse(findings: Sequence[str]) -> list[str]:
    """Findings that differ only in their addresses (one rule broken page after page) as one line
    each: the rule's text with the addresses left out, a count and the span the addresses cover."""
    groups: dict[str, list[str]] = {}
    for f in findings:
        groups.setdefault(" ".join(_ADDRESS.sub("", f).split()), []).append(f)
    out = []
    for key, members in groups.items():
        if len(members) == 1:
            out.append(members[0])
            continue
        addresses = [int(a, 16) for f in members for a in _ADDRESS.findall(f)]
        span = f", {min(addresses):#x}-{max(addresses):#x}" if addresses else ""
        out.append(f"{key} x{len(members)}{span}")
    return out


@dataclass(frozen=True)
class Change:
    kernels: str              # "A-release -> B-release"
    scenario: str
    verdict_a: str
    verdict_b: str
    new: tuple[str, ...]      # findings in B, not in A
    vanished: tuple[str, ...]

    @property
    def regressed(self) -> bool:
        return _RANK[self.verdict_b] > _RANK[self.verdict_a] or (self.verdict_b != "pass" and bool(self.new))


@dataclass(frozen=True)
class Comparison:
    changes: list[Change]
    unchanged: int
    only_a: list[str]      # rows B lacks: B stopped early or ran less, so it regressed
    only_b: list[str]      # rows only B has: new, nothing to compare them with

    @property
    def regressed(self) -> bool:
        return bool(self.only_a) or any(c.regressed for c in self.changes)


def _rows(run: RunDir) -> dict[tuple[int, str], dict[str, Any]]:
    return {run.slot_of(r): r for r in run.results}


def compare(a: RunDir, b: RunDir) -> Comparison:
    rows_a, rows_b = _rows(a), _rows(b)
    changes, unchanged = [], 0
    for key in sorted(rows_a.keys() & rows_b.keys()):
        ra, rb = rows_a[key], rows_b[key]
        fa = {normalise(f) for f in ra["findings"]}
        fb = {normalise(f) for f in rb["findings"]}
        if ra["verdict"] == rb["verdict"] and fa == fb:
            unchanged += 1
            continue
        changes.append(Change(kernels=f"{ra['kernel']} -> {rb['kernel']}", scenario=key[1],
                              verdict_a=ra["verdict"], verdict_b=rb["verdict"],
                              new=tuple(sorted(fb - fa)), vanished=tuple(sorted(fa - fb))))

    def label(rows: dict[tuple[int, str], dict[str, Any]], key: tuple[int, str]) -> str:
        return f"{rows[key]['kernel']} {key[1]}"

    return Comparison(changes=changes, unchanged=unchanged,
                      only_a=[label(rows_a, k) for k in sorted(rows_a.keys() - rows_b.keys())],
                      only_b=[label(rows_b, k) for k in sorted(rows_b.keys() - rows_a.keys())])


def format_comparison(c: Comparison, name_a: str, name_b: str, full: bool = False) -> str:
    """The table; a rule broken at many addresses is one line with a count and its span unless `full`."""
    shown = (lambda fs: list(fs)) if full else collapse
    lines = [f"A: {name_a}", f"B: {name_b}", ""]
    if not c.changes:
        lines.append(f"no scenario changed ({c.unchanged} compared)")
    for ch in c.changes:
        mark = "REGRESSED" if ch.regressed else "changed"
        lines.append(f"{mark:9}  {ch.scenario}  ({ch.kernels})  {ch.verdict_a.upper()} -> {ch.verdict_b.upper()}")
        lines += [f"    + {f}" for f in shown(ch.new)]
        lines += [f"    - {f}" for f in shown(ch.vanished)]
    if c.changes:
        lines.append(f"{len(c.changes)} changed, {c.unchanged} unchanged")
    if c.only_a:
        lines.append(f"MISSING in B ({len(c.only_a)}, a regression: B did not run them): " + ", ".join(c.only_a))
    if c.only_b:
        lines.append("only in B (not compared): " + ", ".join(c.only_b))
    return "\n".join(lines)
