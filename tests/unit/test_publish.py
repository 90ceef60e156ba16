"""Cache entries: whole or absent, built once by concurrent runs, rebuilt after a
builder was killed at any step, with what the dead builder left swept away."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.artifacts import publish as pub
from harness.artifacts.cache import cache_root
from harness.errors import ArtifactError

REPO = Path(__file__).resolve().parents[2]


def filler(text: str):
    def build(out: Path) -> None:
        (out / "a").write_text(text)
        (out / "b").write_text(text)
    return build


def leftovers(parent: Path) -> list[str]:
    """Everything in the kind directory but complete entries and lock files (temps are hidden)."""
    return sorted(p.name for p in parent.iterdir()
                  if not p.name.endswith(".lock") and (p.name.startswith(".") or not pub.is_complete(p)))


def test_built_once_then_reused(tmp_path):
    entry = tmp_path / "kind" / "key"
    assert pub.publish(entry, filler("one")) is True
    assert pub.publish(entry, filler("two")) is False
    assert (entry / "a").read_text() == (entry / "b").read_text() == "one"
    assert sorted(p.name for p in entry.iterdir()) == [".complete", "a", "b"]
    assert leftovers(entry.parent) == []


def test_a_failed_build_leaves_nothing(tmp_path):
    entry = tmp_path / "kind" / "key"

    def broken(out: Path) -> None:
        (out / "a").write_text("half")
        raise ArtifactError("compiler said no")

    with pytest.raises(ArtifactError, match="compiler said no"):
        pub.publish(entry, broken)
    assert not entry.exists() and leftovers(entry.parent) == []


def _killed_at(entry: Path, step: str) -> None:
    """Child process: build `entry`, SIGKILLed at `step` (or halfway through the build)."""
    def kill(at: str, path: Path) -> None:
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    def build(out: Path) -> None:
        (out / "a").write_text("dead")
        if step == "building":
            os.kill(os.getpid(), signal.SIGKILL)
        (out / "b").write_text("dead")

    pub.on_step = kill
    pub.publish(entry, build)


@pytest.mark.parametrize("step", ["locked", "swept", "building", "built", "marked", "published"])
def test_killed_at_each_step_the_next_run_rebuilds(tmp_path, step):
    assert step == "building" or step in pub.STEPS
    entry = tmp_path / "kind" / "key"
    child = multiprocessing.get_context("fork").Process(target=_killed_at, args=(entry, step))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    if step in ("building", "built", "marked"):
        assert leftovers(entry.parent) != []           # what the dead builder left
    if step == "published":
        # The rename happened: the entry is whole, and the next run uses it.
        assert pub.publish(entry, filler("next")) is False
        assert (entry / "b").read_text() == "dead"
    else:
        assert not pub.is_complete(entry)
        assert pub.publish(entry, filler("next")) is True
        assert (entry / "a").read_text() == (entry / "b").read_text() == "next"
    assert leftovers(entry.parent) == []


def test_an_entry_without_its_marker_is_not_trusted(tmp_path):
    # As an interrupted copy left it: a module cut at 4096 bytes where the entry should be.
    entry = tmp_path / "modules" / "6.1.0-test-0123"
    entry.mkdir(parents=True)
    (entry / "nh_probe.ko").write_bytes(b"\x7fELF" + bytes(4092))
    assert pub.publish(entry, filler("whole")) is True
    assert sorted(p.name for p in entry.iterdir()) == [".complete", "a", "b"]
    assert leftovers(entry.parent) == []


def test_a_stale_file_where_the_entry_goes_is_replaced(tmp_path):
    entry = tmp_path / "kind" / "key"
    entry.parent.mkdir()
    entry.write_text("not a directory")
    assert pub.publish(entry, filler("x")) is True and (entry / "a").read_text() == "x"


def test_other_entries_temps_are_swept_only_when_their_builder_is_gone(tmp_path):
    kind = tmp_path / "kind"
    kind.mkdir()
    dead, busy = kind / ".dead.tmp-abc", kind / ".busy.tmp-def"
    dead.mkdir()
    (kind / ".dead.lock").touch()
    busy.mkdir()
    fd = os.open(kind / ".busy.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a live builder of "busy"
        pub.publish(kind / "key", filler("x"))
        assert not dead.exists() and busy.exists()
    finally:
        os.close(fd)


BUILDER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from harness.artifacts.publish import publish

    entry, shared, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    (shared / f"ready-{me}").touch()
    while len(list(shared.glob("ready-*"))) < 2:   # start together
        time.sleep(0.01)

    def build(out):
        with open(shared / "builds", "a") as f:
            f.write(me + "\\n")
        time.sleep(1.5)                            # long enough for the other to arrive
        (out / "made-by").write_text(me)

    t0 = time.monotonic()
    built = publish(entry, build)
    print(json.dumps({"built": built, "waited": time.monotonic() - t0,
                      "made_by": (entry / "made-by").read_text()}))
""")


def test_two_processes_one_builds_the_other_waits_and_uses_it(tmp_path):
    entry = tmp_path / "cache" / "kind" / "key"
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(entry), str(tmp_path), me], cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for me in ("p1", "p2")]
    outs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert (tmp_path / "builds").read_text().count("\n") == 1
    assert sorted(o["built"] for o in outs) == [False, True]
    waiter = next(o for o in outs if not o["built"])
    assert waiter["waited"] > 0.5                       # it waited for the build, not found it done
    assert {o["made_by"] for o in outs} == {(tmp_path / "builds").read_text().strip()}
    assert sorted(p.name for p in entry.parent.iterdir()) == [".key.lock", "key"]


def test_cache_root_that_is_a_file(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("NOTIFIER_HARNESS_CACHE", str(tmp_path / "file"))
    with pytest.raises(ArtifactError, match=r"^cache directory .*/file is unusable: it exists and is not a "
                                            r"directory; it must be a writable directory"):
        cache_root()
    monkeypatch.setenv("NOTIFIER_HARNESS_CACHE", str(tmp_path / "file" / "below"))
    with pytest.raises(ArtifactError, match=r"^cache directory .*/file/below is unusable: Not a directory;"):
        cache_root()


def test_a_kind_directory_that_is_a_file(tmp_path):
    (tmp_path / "modules").write_text("")
    with pytest.raises(ArtifactError, match=r"^cache entry .*/modules/key cannot be written: "
                                            r"(File exists|Not a directory).*must be a writable directory"):
        pub.publish(tmp_path / "modules" / "key", filler("x"))


def test_an_unwritable_cache(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "kind"))

    monkeypatch.setattr(pub.tempfile, "mkdtemp", refuse)
    with pytest.raises(ArtifactError, match=r"^cache entry .*/kind/key cannot be written: Permission denied"):
        pub.publish(tmp_path / "kind" / "key", filler("x"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any mode bits")
def test_a_read_only_cache_directory(tmp_path, monkeypatch):
    root = tmp_path / "ro"
    root.mkdir(mode=0o500)
    monkeypatch.setenv("NOTIFIER_HARNESS_CACHE", str(root))
    with pytest.raises(ArtifactError, match="is not writable"):
        cache_root()
