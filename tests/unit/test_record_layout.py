"""The Python record parser against guest/include/nh_probe.h, compiled."""

import re
import subprocess
from pathlib import Path

import pytest

from harness.events import (ABI_VERSION, RECORD_FIELDS, RECORD_SIZE, Callback, Event, Subscriber, parse_records,
                            record_offsets, RECORD)
from harness.errors import GuestError

INCLUDE = Path(__file__).resolve().parents[2] / "guest" / "include"


@pytest.fixture(scope="module")
def header_facts(tmp_path_factory) -> dict[str, int]:
    tmp = tmp_path_factory.mktemp("layout")
    fields = "\n".join(f'  printf("offset_{n} %zu\\n", offsetof(struct nh_record, {n}));'
                       f'  printf("size_{n} %zu\\n", sizeof(((struct nh_record *)0)->{n}));' for n, _ in RECORD_FIELDS)
    enums = "\n".join(f'  printf("cb_{c.name} %d\\n", NH_CB_{c.name});' for c in Callback)
    enums += "\n".join(f'  printf("ev_{e.name} %d\\n", NH_EV_{e.name});' for e in Event)
    enums += "\n".join(f'  printf("sub_{s.name} %d\\n", NH_SUB_{s.name});' for s in Subscriber)
    src = tmp / "layout.c"
    src.write_text(f"""#include <stddef.h>
#include <stdio.h>
#include "nh_probe.h"
int main(void) {{
  printf("sizeof %zu\\n", sizeof(struct nh_record));
  printf("abi %d\\n", NH_PROBE_ABI_VERSION);
  printf("rec_blockable %u\\n", NH_REC_BLOCKABLE);
{fields}
{enums}
  return 0;
}}
""")
    subprocess.run(["gcc", "-Wall", "-Werror", f"-I{INCLUDE}", "-o", str(tmp / "layout"), str(src)], check=True)
    out = subprocess.run([str(tmp / "layout")], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_size_and_abi(header_facts):
    assert header_facts["sizeof"] == RECORD_SIZE == 64
    assert header_facts["abi"] == ABI_VERSION


def test_every_field_offset_and_size(header_facts):
    offsets = record_offsets()
    for name, code in RECORD_FIELDS:
        assert header_facts[f"offset_{name}"] == offsets[name], name
        assert header_facts[f"size_{name}"] == {"Q": 8, "I": 4, "i": 4}[code], name


def test_enums(header_facts):
    for c in Callback:
        assert header_facts[f"cb_{c.name}"] == c.value
    for e in Event:
        assert header_facts[f"ev_{e.name}"] == e.value
    for s in Subscriber:
        assert header_facts[f"sub_{s.name}"] == s.value
    assert header_facts["rec_blockable"] == 1


def test_header_enums_have_no_member_the_parser_lacks():
    text = (INCLUDE / "nh_probe.h").read_text()
    assert set(re.findall(r"NH_CB_([A-Z_]+) =", text)) - {"UNSET"} == {c.name for c in Callback}
    assert set(re.findall(r"NH_EV_([A-Z_]+) =", text)) - {"UNSET"} == {e.name for e in Event}


def test_parse_round_trip_and_bad_streams():
    raw = RECORD.pack(7, 1000, 0x1000, 0x2000, Callback.START, Event.CLEAR, 1, 0, 1, 42, Subscriber.PRIMARY, 0)
    [rec] = parse_records(raw)
    assert (rec.seq, rec.start, rec.end, rec.callback, rec.event, rec.blockable, rec.pid) == \
        (7, 0x1000, 0x2000, Callback.START, Event.CLEAR, True, 42)
    assert rec.describe() == "#7 start CLEAR [0x1000, 0x2000) pid 42"
    with pytest.raises(GuestError, match="not a multiple of the 64-byte record"):
        parse_records(raw[:-1])
    bad = RECORD.pack(7, 1000, 0, 0, 99, 0, 0, 0, 0, 0, Subscriber.PRIMARY, 0)
    with pytest.raises(GuestError, match="malformed"):
        parse_records(bad)
