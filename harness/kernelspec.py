"""Kernel specs: the text a user writes to name a kernel under test.

Three kinds, all accepted on the command line (--kernel) and in configs:

    debian:6.1                      newest Debian 6.1 cloud kernel apt knows
    debian:6.12                     newest Debian 6.12 cloud kernel
    debian:6.1.0-56                 an exact Debian ABI (flavour cloud-amd64)
    debian:6.12.117+deb12-amd64     an exact release with its flavour
    tree:/src/linux                 a local build tree (arch/x86/boot/bzImage, its .ko files)
    image:/boot/vmlinuz,modules=/lib/modules/6.1.0-56-cloud-amd64
                                    a bare image file with a modules directory

Parsing is pure; nothing here touches the file system.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from harness.errors import ConfigError

KernelKind = Literal["debian", "tree", "image"]

DEFAULT_FLAVOUR = "cloud-amd64"

# A series: "6.1", "6.12".
_SERIES = re.compile(r"^(\d+)\.(\d+)$")
# An exact Debian kernel ABI, with an optional flavour:
#   6.1.0-56, 6.1.0-56-cloud-amd64, 6.12.117+deb12, 6.12.117+deb12-amd64
_EXACT = re.compile(r"^(\d+\.\d+\.\d+(?:-\d+|\+deb\d+))(?:-([a-z][a-z0-9-]*))?$")

_HELP = ("valid kernel specs: debian:6.1, debian:6.12, debian:<exact version such as 6.1.0-56>, "
         "tree:PATH, image:PATH,modules=DIR")


@dataclass(frozen=True)
class KernelSpec:
    """One kernel under test, as the user named it."""

    kind: KernelKind
    text: str                      # what the user wrote, for messages and reports
    series: str = ""               # debian: "6.1" when a series was named
    abi: str = ""                  # debian: "6.1.0-56" when an exact version was named
    flavour: str = DEFAULT_FLAVOUR # debian only
    path: Optional[Path] = None    # tree: the build tree; image: the image file
    modules: Optional[Path] = None # image: the modules directory

    @property
    def debian_release(self) -> str:
        """The exact uname -r of an exact Debian spec, e.g. 6.1.0-56-cloud-amd64."""
        if self.kind != "debian" or not self.abi:
            raise ValueError(f"{self.text} does not name an exact Debian release")
        return f"{self.abi}-{self.flavour}"


def parse_kernel_spec(text: str) -> KernelSpec:
    """Parse one spec; a bad one raises ConfigError naming the valid forms."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"empty kernel spec; {_HELP}")
    text = text.strip()
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ConfigError(f"kernel spec {text!r} has no kind; {_HELP}")
    if kind == "debian":
        if _SERIES.match(rest):
            return KernelSpec(kind="debian", text=text, series=rest)
        m = _EXACT.match(rest)
        if m:
            return KernelSpec(kind="debian", text=text, abi=m.group(1),
                              series=".".join(m.group(1).split(".")[:2]),
                              flavour=m.group(2) or DEFAULT_FLAVOUR)
        raise ConfigError(f"kernel spec {text!r}: {rest!r} is not a Debian kernel series "
                          f"(like 6.1) or version (like 6.1.0-56 or 6.12.117+deb12)")
    if "\0" in text:
        raise ConfigError(f"kernel spec {text!r} contains a NUL byte; {_HELP}")
    if kind == "tree":
        return KernelSpec(kind="tree", text=text, path=_expand(text, rest))
    if kind == "image":
        image, _, opts = rest.partition(",")
        modules: Optional[Path] = None
        for opt in filter(None, opts.split(",")):
            key, eq, value = opt.partition("=")
            if key != "modules" or not eq or not value:
                raise ConfigError(f"kernel spec {text!r}: unknown option {opt!r}; "
                                  f"the only option is modules=DIR")
            modules = _expand(text, value)
        if not image:
            raise ConfigError(f"kernel spec {text!r} names no image file; {_HELP}")
        if modules is None:
            raise ConfigError(f"kernel spec {text!r} needs its modules directory: "
                              f"image:PATH,modules=DIR")
        return KernelSpec(kind="image", text=text, path=_expand(text, image), modules=modules)
    raise ConfigError(f"kernel spec {text!r}: unknown kind {kind!r}; {_HELP}")


def _expand(text: str, path: str) -> Path:
    """~ and ~user as the shell would; a user with no home is the spec's error."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        user = path[1:].split("/", 1)[0]
        why = f"there is no user {user!r}" if user else "the home directory is unknown"
        raise ConfigError(f"kernel spec {text!r}: cannot expand ~{user}: {why}; "
                          f"write the path in full") from None
