"""The guest-data boundary on its own: what each typed parse accepts, and that everything else is a
GuestDataError naming the source and quoting the text, never another exception."""

from __future__ import annotations

import time

import pytest

from harness.errors import GuestError
from harness.guest_data import (MAX_JSON_DEPTH, MAX_JSON_LINE, GuestDataError, field, int_field, int_list_field,
                                int_map_field, only, parse_hex_bytes, parse_int, parse_ints, parse_json_line,
                                parse_json_lines, parse_key_ints, quote)


def refused(action, source: str) -> str:
    """`action` must raise GuestDataError naming `source`; its message."""
    with pytest.raises(GuestDataError) as e:
        action()
    assert isinstance(e.value, GuestError) and e.value.source == source
    assert str(e.value).startswith(f"{source}: ")
    return str(e.value)


def test_ints_in_sysfs_shape():
    assert parse_int("42\n", "f") == 42 and parse_int(b" -3 ", "f") == -3 and parse_int("+7", "f") == 7
    assert parse_int("0x1F", "f", base=16) == 31 and parse_int("ff", "f", base=16) == 255
    assert parse_int(str(2**64 - 1), "f") == 2**64 - 1


@pytest.mark.parametrize("text", ["", "\n", "\x00garbage", "1\x00", "\x00\x01\x02\xff", b"6\xff4", "1 2", "1.0",
                                  "0x10", "\u0663", "9" * 21, "9" * 5000, "-", "١٢"])
def test_anything_else_is_not_an_int(text):
    message = refused(lambda: parse_int(text, "/sys/x"), "/sys/x")
    assert "expected an integer" in message


def test_the_offending_text_is_quoted_cut_and_escaped():
    message = refused(lambda: parse_int("\x00\x1b[31m" + "x" * 500, "/sys/x"), "/sys/x")
    assert "'\\x00\\x1b[31m" in message and message.endswith("...") and len(message) < 200
    assert quote(b"\xff\xfe") == repr("\ufffd\ufffd")


def test_bounds():
    assert parse_int("5", "f", lo=0, hi=5) == 5
    assert "6 is outside [0, 5]" in refused(lambda: parse_int("6", "f", lo=0, hi=5), "f")
    assert "-1 is outside [0, inf]" in refused(lambda: parse_int("-1", "f", lo=0), "f")


def test_int_lists_and_key_value_files():
    assert parse_ints("12\n 13\n", "cgroup.procs") == [12, 13] and parse_ints("", "cgroup.procs") == []
    refused(lambda: parse_ints("12 abc", "cgroup.procs"), "cgroup.procs")
    assert parse_key_ints("low 0\n\noom 2\n", "memory.events") == {"low": 0, "oom": 2}
    for text in ("oom\n", "oom 1 2\n", "oom x\n", "oom_kill \x001\n"):
        refused(lambda: parse_key_ints(text, "memory.events"), "memory.events")


def test_hex_bytes():
    assert parse_hex_bytes("ff00", "bitmap") == b"\xff\x00" and parse_hex_bytes("", "bitmap") == b""
    for text in ("f", "zz", "ff 00", "0xff"):
        refused(lambda: parse_hex_bytes(text, "bitmap"), "bitmap")


def test_a_json_object_per_line():
    assert parse_json_line('{"op": "start", "pid": 5}', "mmops") == {"op": "start", "pid": 5}
    assert parse_json_line(b'{"s": "\xff"}', "mmops") == {"s": "\ufffd"}
    assert parse_json_lines('{"a": 1}\n\n  \n{"b": [2]}\n', "mmops") == [{"a": 1}, {"b": [2]}]


@pytest.mark.parametrize("line,problem", [
    ("[1, 2]", "expected a JSON object, got list"), ('"x"', "got str"), ("3", "got int"), ("null", "got NoneType"),
    ("Segmentation fault", "not JSON"), ("{", "not JSON"), ("", "not JSON"), ('{"a": NaN}', "not JSON"),
    ('{"a": -Infinity}', "not JSON"), ('{"a": 1}{"b": 2}', "not JSON"), ('{"a": "\x00"}', "not JSON"),
    ('{"a": ' + "9" * 5000 + "}", "an integer of 5000 digits"), ("[" * 10000, "nested deeper than"),
    ("[" * 100000 + "]" * 100000, "nested deeper than"), ('{"a": ' + "[" * 33 + "]" * 33 + "}", "nested deeper"),
])
def test_anything_else_is_not_a_json_object(line, problem):
    start = time.monotonic()
    assert problem in refused(lambda: parse_json_line(line, "mmops"), "mmops")
    assert time.monotonic() - start < 1.0


def test_limits_leave_real_lines_alone():
    inside = '{"a": ' + "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1) + "}"
    assert parse_json_line(inside, "mmops")
    brackets_in_a_string = '{"s": "' + "[" * 100 + '", "n": -' + "9" * 19 + "}"
    assert parse_json_line(brackets_in_a_string, "mmops")["n"] == -int("9" * 19)


def test_a_line_past_the_length_limit_is_refused_fast():
    start = time.monotonic()
    assert "characters (at most" in refused(lambda: parse_json_line("[" * (MAX_JSON_LINE + 1), "mmops"), "mmops")
    line = '{"a": [' + ",".join(["[1]"] * 200000) + "]}"     # shallow, but many brackets to scan
    assert len(line) < MAX_JSON_LINE and len(parse_json_line(line, "mmops")["a"]) == 200000
    assert time.monotonic() - start < 1.0


def test_typed_fields():
    line = {"op": "map", "start": 4096, "thp": True, "vmas": [1, 2], "stats": {"a": 1}}
    assert field(line, "op", str, "mmops") == "map" and field(line, "thp", bool, "mmops") is True
    assert field(line, "name", str, "mmops", "") == "" and int_field(line, "end", "mmops", 0) == 0
    assert int_field(line, "start", "mmops", lo=0, hi=4096) == 4096
    assert int_list_field(line, "vmas", "mmops", lo=0) == [1, 2] and int_map_field(line, "stats", "s") == {"a": 1}
    assert "no 't0' in" in refused(lambda: field(line, "t0", int, "mmops"), "mmops")
    assert "'thp' is not an integer" in refused(lambda: int_field(line, "thp", "mmops"), "mmops")
    assert "'start' is not a str" in refused(lambda: field(line, "start", str, "mmops"), "mmops")
    assert "'op' is not a bool" in refused(lambda: field(line, "op", bool, "mmops"), "mmops")
    assert "4096 is outside" in refused(lambda: int_field(line, "start", "mmops", hi=4095), "mmops 'start'")
    assert "got list" in refused(lambda: field([1, 2], "op", str, "mmops"), "mmops")     # type: ignore[arg-type]
    refused(lambda: int_list_field({"v": [1, "2"]}, "v", "minivmm"), "minivmm 'v'")
    refused(lambda: int_list_field({"v": [True]}, "v", "minivmm"), "minivmm 'v'")
    refused(lambda: int_list_field({"v": [5]}, "v", "minivmm", hi=4), "minivmm 'v'")
    refused(lambda: int_map_field({"stats": {"a": "1"}}, "stats", "minivmm"), "minivmm 'stats'")
    refused(lambda: int_map_field({"stats": [1]}, "stats", "minivmm"), "minivmm")


def test_only():
    assert only(["ksm"], "ksm operation", "ksm: mmops") == "ksm"
    assert "expected exactly one ksm operation, found 0" in refused(lambda: only([], "ksm operation", "r"), "r")
    assert "found 2" in refused(lambda: only([1, 2], "oom operation", "r"), "r")
