"""The one boundary where data from the guest becomes typed values.

The kernel under test is usually the broken part, so everything it or a
workload inside it prints is untrusted input: /proc and sysfs text, the
probe's counters, mmops's and minivmm's JSON lines, ftrace text.  Every parse
of such data goes through a function here; bad data ends in a GuestDataError
that names its source and quotes the offending text (cut and escaped), which
the runner turns into the scenario's error row.  Nothing else is caught.

Limits keep a hostile guest from costing the host: JSON lines are bounded in
length, nesting and number size before the parser sees them.  Nothing here
does I/O, so the model may use it too.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Optional, Sequence, TypeVar

from harness.errors import GuestError

# A JSON line longer than this is not something a workload of ours prints.
MAX_JSON_LINE = 1 << 20
MAX_JSON_DEPTH = 32
# Integers from the guest are at most 64-bit (and negative ones small): 20 digits and a sign.
MAX_INT_DIGITS = 20
QUOTE_CHARS = 120
U64_MAX = (1 << 64) - 1
PID_MAX = 1 << 22          # PID_MAX_LIMIT on 64-bit: no pid is larger
MAX_ERRNO = 4095           # the kernel's errno values are 1..MAX_ERRNO

T = TypeVar("T")


class GuestDataError(GuestError):
    """Data from the guest is not what its source promises; the message names the source."""

    def __init__(self, source: str, problem: str, text: object = None):
        quoted = f": {quote(text)}" if text is not None else ""
        super().__init__(f"{source}: {problem}{quoted}")
        self.source = source


def quote(text: object, limit: int = QUOTE_CHARS) -> str:
    """`text` as a short printable quote: cut to `limit` characters, control characters escaped."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text[: limit * 4]).decode(errors="replace")
    s = str(text)
    cut = len(s) > limit
    return repr(s[:limit]) + ("..." if cut else "")


def _text(data: str | bytes | bytearray) -> str:
    return bytes(data).decode(errors="replace") if isinstance(data, (bytes, bytearray)) else data


# ASCII digits only: \d would also take other scripts' digits, which no kernel prints.
_INT = re.compile(r"[+-]?[0-9]{1,%d}" % MAX_INT_DIGITS)
_HEX_INT = re.compile(r"(?:0[xX])?[0-9a-fA-F]{1,16}")
_HEX_BYTES = re.compile(r"(?:[0-9a-fA-F]{2})*")


def parse_int(text: str | bytes, source: str, *, base: int = 10, lo: Optional[int] = None,
              hi: Optional[int] = None) -> int:
    """One integer, surrounding whitespace allowed; `lo`/`hi` bound it (inclusive)."""
    s = _text(text).strip()
    pattern = _HEX_INT if base == 16 else _INT
    if not pattern.fullmatch(s):
        raise GuestDataError(source, "expected an integer" if base == 10 else "expected a hex integer", text)
    return check_range(int(s, base), source, lo, hi)


def check_range(value: int, source: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise GuestDataError(source, f"{value} is outside {bounds}")
    return value


def parse_ints(text: str, source: str, *, lo: Optional[int] = None, hi: Optional[int] = None) -> list[int]:
    """Whitespace-separated integers (a cgroup.procs file, a list of pids)."""
    return [parse_int(word, source, lo=lo, hi=hi) for word in text.split()]


def parse_key_ints(text: str, source: str) -> dict[str, int]:
    """`key value` lines (memory.events, vmstat): each line exactly two words, the second an integer."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if len(words) != 2:
            raise GuestDataError(source, "expected 'key value' lines", line)
        out[words[0]] = parse_int(words[1], source)
    return out


def parse_hex_bytes(text: str, source: str) -> bytes:
    """Bytes written as two hex digits each (minivmm's dirty bitmaps)."""
    if not _HEX_BYTES.fullmatch(text):
        raise GuestDataError(source, "expected hex bytes", text)
    return bytes.fromhex(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _parse_json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _too_deep(text: str) -> bool:
    """Whether `text`'s arrays and objects nest deeper than MAX_JSON_DEPTH (brackets inside strings
    do not count).  Most lines have too few brackets to need the scan."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif c in "]}":
            depth -= 1
    return False


def parse_json_line(line: str | bytes, source: str) -> dict[str, Any]:
    """One JSON object on one line, within the size, depth and number limits."""
    line = _text(line)
    if len(line) > MAX_JSON_LINE:
        raise GuestDataError(source, f"a line of {len(line)} characters (at most {MAX_JSON_LINE})", line)
    if _too_deep(line):
        raise GuestDataError(source, f"JSON nested deeper than {MAX_JSON_DEPTH}", line)
    try:
        value = json.loads(line, parse_int=_parse_json_int, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise GuestDataError(source, f"not JSON ({e})", line) from None
    if not isinstance(value, dict):
        raise GuestDataError(source, f"expected a JSON object, got {type(value).__name__}", line)
    return value


def parse_json_lines(text: str, source: str) -> list[dict[str, Any]]:
    """Every non-empty line of `text` as a JSON object."""
    return [parse_json_line(line, source) for line in text.splitlines() if line.strip()]


_MISSING: Any = object()


def field(obj: Mapping[str, Any], key: str, kind: type[T], source: str, default: Any = _MISSING) -> T:
    """obj[key] as `kind` (int, str, bool, list, dict; an int is not a bool and a bool is not an int).
    Missing: `default` if given, else an error naming the key."""
    if not isinstance(obj, Mapping):
        raise GuestDataError(source, f"expected a JSON object with {key!r}, got {type(obj).__name__}", _shown(obj))
    if key not in obj:
        if default is not _MISSING:
            return default  # type: ignore[no-any-return]
        raise GuestDataError(source, f"no {key!r} in", _shown(obj))
    value = obj[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise GuestDataError(source, f"{key!r} is not an integer", _shown(obj))
    if kind is not int and not isinstance(value, kind):
        raise GuestDataError(source, f"{key!r} is not a {kind.__name__}", _shown(obj))
    return value  # type: ignore[no-any-return]


def int_field(obj: Mapping[str, Any], key: str, source: str, default: Any = _MISSING,
              lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """obj[key] as an int within [lo, hi]; a missing key gives `default` (unchecked) if there is one."""
    if default is not _MISSING and isinstance(obj, Mapping) and key not in obj:
        return default  # type: ignore[no-any-return]
    return check_range(field(obj, key, int, source), f"{source} {key!r}", lo, hi)


def int_list_field(obj: Mapping[str, Any], key: str, source: str, lo: Optional[int] = None,
                   hi: Optional[int] = None) -> list[int]:
    """obj[key] as a list of ints, each within [lo, hi]."""
    items = field(obj, key, list, source)
    where = f"{source} {key!r}"
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise GuestDataError(where, "holds something that is not an integer", _shown(item))
        check_range(item, where, lo, hi)
    return items


def int_map_field(obj: Mapping[str, Any], key: str, source: str) -> dict[str, int]:
    """obj[key] as an object of integers (minivmm's KVM stats)."""
    items = field(obj, key, dict, source)
    for name in items:
        int_field(items, name, f"{source} {key!r}")
    return items


def _shown(obj: object) -> str:
    try:
        return json.dumps(obj)
    except (TypeError, ValueError, RecursionError):
        return repr(obj)


def only(items: Sequence[T], what: str, source: str) -> T:
    """The single item of `items` (the workload's one `ksm` operation, say)."""
    if len(items) != 1:
        raise GuestDataError(source, f"expected exactly one {what}, found {len(items)}")
    return items[0]
