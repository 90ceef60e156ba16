"""Cache entries that are either whole or absent, and built once however many runs ask.

An entry is a directory.  It is built in a private temp directory beside its
final place (`.NAME.tmp-XXXX`), marked complete, and published with one
rename, so a reader sees all of it or nothing: an image and its host key, a
module, an unpacked kernel.  A lock file beside it (`.NAME.lock`, flock)
serialises builders: a second run asking for the same entry waits, then
finds the first run's entry and uses it.  A run killed mid-build leaves only
a temp directory whose lock died with it; the next run that takes a lock in
that directory removes it.

    entry = cache / "modules" / key
    built = publish(entry, lambda tmp: make_into(tmp))
    use(entry / "nh_probe.ko")
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from harness.errors import ArtifactError

logger = logging.getLogger(__name__)

# Written last inside the temp directory, so only a complete build carries it;
# entries without it (older layouts, or anything not made here) are rebuilt.
COMPLETE = ".complete"
_TMP = ".tmp-"

# The points at which `on_step` is called, in order.
STEPS = ("locked", "swept", "built", "marked", "published")


def on_step(step: str, path: Path) -> None:
    """Called at each step with the directory concerned; tests replace it to kill a build there."""


def is_complete(entry: Path) -> bool:
    return (entry / COMPLETE).is_file()


def publish(entry: Path, build: Callable[[Path], None]) -> bool:
    """Make `entry` exist and be complete; `build(tmp)` fills an empty directory with its content.

    Returns True when this call built it, False when it was there already (or
    another run built it while this one waited).  An OSError on the cache
    itself (not a directory, read-only, full) becomes one ArtifactError line.
    """
    if is_complete(entry):
        logger.debug("cache hit: %s", entry)
        return False
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        waited = time.monotonic()
        with _locked(entry):
            on_step("locked", entry)
            if is_complete(entry):
                logger.debug("cache hit after waiting %.1f s for another run's build: %s",
                             time.monotonic() - waited, entry)
                return False
            _sweep(entry)
            on_step("swept", entry)
            tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}{_TMP}", dir=entry.parent))
            try:
                build(tmp)
                on_step("built", tmp)
                (tmp / COMPLETE).write_text(entry.name + "\n")
                on_step("marked", tmp)
                tmp.chmod(0o755)  # mkdtemp's 0700 is for while it is private
                os.rename(tmp, entry)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            on_step("published", entry)
            logger.debug("cache build: %s in %.1f s", entry, time.monotonic() - waited)
            return True
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        if e.filename and not str(e.filename).startswith(str(entry.parent)):
            raise ArtifactError(f"building cache entry {entry} failed: {e.strerror or e}{where}") from None
        raise ArtifactError(f"cache entry {entry} cannot be written: {e.strerror or e}{where}; "
                            f"the cache directory must be a writable directory "
                            f"(NOTIFIER_HARNESS_CACHE chooses another)") from None


class _locked:
    """flock on `.NAME.lock` beside the entry: exclusive, released when the holder dies."""

    def __init__(self, entry: Path):
        self.path = _lock_path(entry)
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing the last descriptor drops the lock


def _lock_path(entry: Path) -> Path:
    return entry.with_name(f".{entry.name}.lock")


def _sweep(entry: Path) -> None:
    """Remove what dead builders left in the entry's directory.

    Our own entry's temp directories are stale for sure (we hold its lock).
    Another entry's are stale when its lock can be taken without waiting:
    its builder is gone.  An entry without its marker is moved aside first so
    that an interrupted removal is just another stale temp directory.
    """
    if entry.is_symlink() or entry.is_file():
        entry.unlink()
    elif entry.exists():
        os.rename(entry, tempfile.mkdtemp(prefix=f".{entry.name}{_TMP}", dir=entry.parent))
    for tmp in entry.parent.glob(f".*{_TMP}*"):
        name = tmp.name[1:].rsplit(_TMP, 1)[0]
        if name == entry.name:
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        lock = _lock_path(entry.with_name(name))
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # being built right now
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            os.close(fd)
