"""The serial console: always drained, teed to console.log, watched for markers.

QEMU writes the guest's ttyS0 to its stdout pipe.  A reader thread owns a
pexpect `fdspawn` on that pipe and loops on `expect`; if nobody read it, a
chatty kernel would fill the pipe and stall the vCPU writing to the UART.
Every byte read goes to console.log (pexpect's logfile_read) and to a bounded
in-memory tail used in error messages.

The guest is untrusted: a kernel that floods its console must cost the host
bounded memory and disk.  The reader never keeps more than a marker could
straddle, console.log stops growing at LOG_LIMIT per boot (with a note, and
the guest still drained), and a failed write (a full disk) is recorded for
the runner to stop the run on, while the reader goes on draining.
"""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path
from typing import IO, Optional, Union

import pexpect
import pexpect.fdpexpect

from harness.vm.qemu_args import READY_MARKER

_TAIL_BYTES = 64 * 1024
# What one boot may write into console.log; past it, bytes are counted, not kept.
LOG_LIMIT = 64 << 20
# pexpect keeps everything read since the last match for `before`; this reader never uses it.
_BEFORE_LIMIT = 64 * 1024
# Lines that mean the kernel has died; issue-level classification lives elsewhere.
_PANIC = re.compile(rb"Kernel panic - not syncing[^\r\n]*")
_READY = re.compile(re.escape(READY_MARKER.encode()) + rb"[^\r\n]*")
# The guest's init prints these for each bring-up step that failed.
_INIT_FAILED = re.compile(rb"NH-INIT: FAILED: [^\r\n]*")
# ... and these as each step ends, with the kernel's uptime: where the boot's time goes.
_INIT_AT = re.compile(rb"NH-INIT: at (\w{1,16}) (\d{1,6}\.\d{1,3})")


class _BoundedSpawn(pexpect.fdpexpect.fdspawn):  # type: ignore[type-arg]
    """fdspawn that forgets `before`: expect() appends every byte it reads to it until a pattern
    matches, so a flood without a marker would be held whole (the reader never reads `before`;
    the tee has every byte)."""

    _before: io.BytesIO

    def read_nonblocking(self, size: int = 1, timeout: Optional[float] = -1) -> bytes:
        if self._before.tell() > _BEFORE_LIMIT:
            self._before = io.BytesIO()
        return bytes(super().read_nonblocking(size, timeout))


class _Tee:
    """pexpect's logfile_read: to console.log (up to `limit` bytes), and a tail kept in memory.
    It never raises: pexpect would end the reader, the guest would block on its UART, and a full
    disk would look like a hung kernel.  `write_error` says what failed instead."""

    def __init__(self, log: IO[bytes], path: Path, limit: int = LOG_LIMIT):
        self._log = log
        self._path = path
        self._tail = bytearray()
        self._lock = threading.Lock()
        self.first_output = threading.Event()
        self.bytes_seen = 0
        self.limit = limit
        self.written = 0
        self.dropped = 0
        self.write_error = ""

    def _keep(self, data: bytes) -> None:
        room = self.limit - self.written
        if self.write_error or room <= 0:
            self.dropped += len(data)
            return
        kept = data[:room]
        try:
            self._log.write(kept)
            if len(kept) < len(data):
                self._log.write(f"\n[notifier-harness: console output past {self.limit >> 20} MiB of this "
                                f"boot is not kept]\n".encode())
            self._log.flush()
        except OSError as e:
            self.write_error = f"cannot write {self._path}: {e.strerror or e}"
            self.dropped += len(data)
            return
        self.written += len(kept)
        self.dropped += len(data) - len(kept)

    def write(self, data: bytes) -> None:
        self._keep(data)
        with self._lock:
            self._tail += data
            del self._tail[:-_TAIL_BYTES]
            self.bytes_seen += len(data)
        if data:
            self.first_output.set()

    def flush(self) -> None:
        try:
            self._log.flush()
        except OSError as e:
            self.write_error = self.write_error or f"cannot write {self._path}: {e.strerror or e}"

    def tail(self) -> bytes:
        with self._lock:
            return bytes(self._tail)


class Console:
    """Reads one QEMU's serial output until EOF, in a thread of its own."""

    def __init__(self, stream: IO[bytes], log_path: Path, log_limit: int = LOG_LIMIT):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self._tee = _Tee(self._log, log_path, log_limit)
        self._child = _BoundedSpawn(stream, timeout=1.0, searchwindowsize=4096, logfile=None)
        self._child.logfile_read = self._tee
        self.ready = threading.Event()
        self.ready_line = ""
        self.panic_line = ""
        self.panicked = threading.Event()
        self.init_failures: list[str] = []
        self.boot_steps: dict[str, float] = {}   # init's step -> the kernel's uptime when it ended
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="console", daemon=True)
        self._thread.start()

    @property
    def first_output(self) -> threading.Event:
        return self._tee.first_output

    @property
    def bytes_seen(self) -> int:
        return self._tee.bytes_seen

    @property
    def dropped(self) -> int:
        """Console bytes read but not kept in console.log (past LOG_LIMIT, or after a write error)."""
        return self._tee.dropped

    @property
    def write_error(self) -> str:
        return self._tee.write_error

    def _drain(self) -> None:
        patterns: list[Union[re.Pattern[str], re.Pattern[bytes], str, bytes, type[pexpect.EOF],
                             type[pexpect.TIMEOUT]]] = [_READY, _PANIC, _INIT_FAILED, _INIT_AT, pexpect.EOF,
                                                        pexpect.TIMEOUT]
        try:
            while True:
                try:
                    i = self._child.expect(patterns)
                except (OSError, ValueError):
                    break  # the pipe was closed under us at shutdown
                if i == 0:
                    self.ready_line = self._matched()
                    self.ready.set()
                elif i == 1:
                    self.panic_line = self._matched()
                    self.panicked.set()
                elif i == 2:
                    self.init_failures.append(self._matched())
                elif i == 3:
                    step, _, uptime = self._matched().removeprefix("NH-INIT: at ").partition(" ")
                    if len(self.boot_steps) < 16:
                        self.boot_steps[step] = float(uptime)
                elif i == 4:
                    break
                else:
                    # Unmatched text accumulates in pexpect's buffer; the tee
                    # already has it, so keep only what a marker could straddle.
                    self._child.buffer = self._child.buffer[-256:]
        finally:
            self.closed.set()

    def _matched(self) -> str:
        after = self._child.after
        return after.decode(errors="replace").strip() if isinstance(after, bytes) else ""

    def tail(self, lines: int = 25) -> str:
        text = self._tee.tail().decode(errors="replace").replace("\r", "")
        return "\n".join(text.rstrip("\n").splitlines()[-lines:])

    def wait(self, event: threading.Event, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not event.is_set() and not self.closed.is_set():
            if time.monotonic() >= deadline:
                return False
            event.wait(0.05)
        return event.is_set()

    def wait_step(self, step: str, timeout: float) -> bool:
        """Whether init has reported `step` (`NH-INIT: at STEP`), waiting up to `timeout` for it."""
        deadline = time.monotonic() + timeout
        while step not in self.boot_steps and not self.closed.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        return step in self.boot_steps

    def close(self, timeout: float = 5.0) -> None:
        """Join the reader (QEMU's exit closes the pipe) and close the log."""
        self._thread.join(timeout)
        try:
            self._log.close()
        except OSError as e:
            self._tee.write_error = self._tee.write_error or f"cannot write {self.log_path}: {e.strerror or e}"

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Console({self.log_path}, {self.bytes_seen} bytes)"

