"""Text from the guest made safe to show: every control character but newline and tab escaped.

A kernel report, an errno text or a workload's output can carry ESC, NUL or
bytes that are not UTF-8.  Unfiltered, they make junit.xml unparseable (XML 1.0
forbids most control characters), and on a terminal they are escape sequences
the guest chose (OSC 52 writes the user's clipboard).  Everything that reaches
junit.xml, results.json's human fields, the summary table or the terminal goes
through printable().
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls, lone surrogates, and the two non-characters XML
# refuses.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: str) -> str:
    return _UNSAFE.sub(_escape, text)
