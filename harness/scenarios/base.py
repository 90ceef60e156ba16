"""What a scenario is: a name, a description, and run(context) -> Verdict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from harness.config import ScenarioConfig
from harness.guest import Guest
from harness.model.versions import Features
from harness.verdict import Verdict


@dataclass
class ScenarioContext:
    guest: Guest
    features: Features            # what the kernel under test has, from its release
    config: ScenarioConfig
    seed: int
    out_dir: Path                 # the scenario's own directory in the run
    console_tail: Callable[[], str]
    init_failures: tuple[str, ...] = ()   # NH-INIT: FAILED lines from boot
    # Host-side faults for the harness's own tests: "qemu-stop", "qemu-kill", "ssh-cut".
    host_fault: Callable[[str], None] = lambda fault: None


class Scenario(Protocol):
    name: str
    description: str

    def run(self, ctx: ScenarioContext) -> Verdict: ...
