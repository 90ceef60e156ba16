"""The kernel's configuration as a source of features: what a scenario needs, and why it is skipped.

A developer's tree is rarely Debian's config.  Each scenario declares the
options it needs (`needs`, e.g. ("CONFIG_KSM",) or ("CONFIG_KVM_AMD|CONFIG_KVM_INTEL",)
for either); a kernel without one skips it with the option named, instead of
failing deep inside with a guest error.  The text comes from the kernel's
.config (a tree, Debian's boot/config-*, an image's DIR/build/.config or
DIR/config) or, failing those, from /proc/config.gz in the guest.  Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class KernelConfig:
    """Options and their values ("y", "m", a number or a string); an option not listed is not set."""

    options: Mapping[str, str]
    source: str                    # where the text came from, for messages

    def value(self, option: str) -> Optional[str]:
        return self.options.get(option)

    def enabled(self, option: str) -> bool:
        """Built in or a module."""
        return self.options.get(option) in ("y", "m")

    def missing(self, needs: Sequence[str]) -> list[str]:
        """The requirements of `needs` that are not met, each as its text ("A|B" is one of A or B)."""
        return [need for need in needs if not any(self.enabled(o) for o in need.split("|"))]


def parse_kconfig(text: str, source: str) -> KernelConfig:
    """A .config's text; comments and blank lines are skipped, values' quotes kept."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if m := _SET.match(line):
            options[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            options.pop(m.group(1), None)
    return KernelConfig(options=options, source=source)


def skip_reason(missing: Sequence[str]) -> str:
    """`CONFIG_KSM is not set`; `neither CONFIG_KVM_AMD nor CONFIG_KVM_INTEL is set`."""
    parts = []
    for need in missing:
        names = need.split("|")
        parts.append(f"{names[0]} is not set" if len(names) == 1
                     else f"none of {', '.join(names)} is set" if len(names) > 2
                     else f"neither {names[0]} nor {names[1]} is set")
    return "; ".join(parts)
