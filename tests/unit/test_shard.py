"""Sharding a run across machines and merging the shards back: deterministic, balanced, and the
merge is the unsharded run row for row."""

from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.compare import compare
from harness.config import Config, MachineConfig, ScenarioConfig
from harness.errors import ConfigError
from harness.kernelspec import parse_kernel_spec
from harness.merge import merge_runs
from harness.rundir import RunDirError, load_run
from harness.runner import Run
from harness.shard import Shard, parse_shard, split
from harness.verdict import Verdict
from tests.unit.fake_machine import FakeMachine, Scripted, fake_prepare

SLOTS = [(k, s) for k in range(2) for s in ("smoke", "mm-basic", "ksm", "aging", "dirty-log")]


def test_every_slot_is_in_exactly_one_shard_in_order():
    for n in (1, 2, 3, 10, 11):
        parts = [split(SLOTS, Shard(k, n)) for k in range(1, n + 1)]
        assert [s for part in parts for s in part] == SLOTS


def test_by_count_the_parts_are_even_and_a_kernel_stays_together_where_it_can():
    one, two = split(SLOTS, Shard(1, 2)), split(SLOTS, Shard(2, 2))
    assert one == SLOTS[:5] and two == SLOTS[5:]


def test_durations_balance_the_parts():
    durations = {s: 1.0 for s in SLOTS} | {(0, "dirty-log"): 60.0, (1, "dirty-log"): 60.0}
    one, two = split(SLOTS, Shard(1, 2), durations), split(SLOTS, Shard(2, 2), durations)
    weight = [sum(durations[s] for s in part) for part in (one, two)]
    assert abs(weight[0] - weight[1]) <= 4 and one + two == SLOTS
    assert split(SLOTS, Shard(1, 2), durations) == one        # the same inputs, the same split


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/2/3", "-1/2", "1/99999"])
def test_a_bad_shard_is_one_line(text):
    with pytest.raises(ConfigError, match="expected K/N"):
        parse_shard(text)


@pytest.fixture
def scenarios(monkeypatch):
    table = {name: Scripted(name, lambda ctx: Verdict("pass")) for name in ("a", "b", "c", "d")}
    table["c"] = Scripted("c", lambda ctx: Verdict("fail", ("[rule] c broke",)))
    monkeypatch.setattr("harness.runner.SCENARIOS", table)
    monkeypatch.setattr("harness.merge.SCENARIOS", table)
    return table


def _run(tmp_path, monkeypatch, name, shard=None, seed=1):
    monkeypatch.setattr("harness.runner.cache_root", lambda: tmp_path / "cache")
    config = Config(kernels=(parse_kernel_spec("debian:6.1"), parse_kernel_spec("debian:6.12")),
                    machine=MachineConfig(accel="tcg"), seed=seed,
                    scenarios=tuple(ScenarioConfig(n, timeout_s=30) for n in ("a", "b", "c", "d")))
    out = tmp_path / name
    Run(config=config, out_dir=out, log=lambda line: None, prepare_kernel=fake_prepare, machine_factory=FakeMachine,
        shard=shard).execute()
    return out


def test_shards_merged_are_the_unsharded_run(tmp_path, monkeypatch, scenarios, capsys):
    whole = _run(tmp_path, monkeypatch, "whole")
    parts = [_run(tmp_path, monkeypatch, f"part{k}", Shard(k, 3)) for k in (1, 2, 3)]
    assert sorted(len(json.loads((p / "results.json").read_text())["results"]) for p in parts) == [2, 3, 3]
    assert main(["merge", *map(str, parts), "--out", str(tmp_path / "merged")]) == 0
    merged, full = (json.loads((p / "results.json").read_text()) for p in (tmp_path / "merged", whole))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "duration_s"} for r in rows]  # noqa: E731
    assert strip(merged["results"]) == strip(full["results"])
    assert [k["boots"] for k in merged["run"]["kernels"]] == [2, 2]      # a cut inside each kernel: one more boot
    c = compare(load_run(whole), load_run(tmp_path / "merged"))
    assert not c.changes and not c.only_a and not c.only_b and c.unchanged == 8
    assert (tmp_path / "merged" / merged["results"][0]["artifacts"]).is_dir()
    capsys.readouterr()
    assert main(["compare", str(whole), str(tmp_path / "merged")]) == 0


def test_merging_shards_of_different_runs_is_an_error(tmp_path, monkeypatch, scenarios):
    one = _run(tmp_path, monkeypatch, "one", Shard(1, 2))
    other_seed = _run(tmp_path, monkeypatch, "two", Shard(2, 2), seed=9)
    with pytest.raises(RunDirError, match="ran different configs or seeds"):
        merge_runs([load_run(one), load_run(other_seed)], tmp_path / "m1")
    with pytest.raises(RunDirError, match="missing 2/2"):
        merge_runs([load_run(one)], tmp_path / "m2")
    with pytest.raises(RunDirError, match="given twice: 1/2"):
        merge_runs([load_run(one), load_run(one)], tmp_path / "m3")
    whole = _run(tmp_path, monkeypatch, "whole")
    with pytest.raises(RunDirError, match="is not a shard"):
        merge_runs([load_run(whole)], tmp_path / "m4")
