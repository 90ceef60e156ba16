"""The debug channel: what the harness itself did, through the standard `logging` module.

Every module logs to `logging.getLogger(__name__)` under the `harness` logger:
the QEMU argv, QMP commands, answers and events, SSH commands with their exit
status and duration, cache hits and builds.  A run always keeps it all in
`harness.log` in its directory; `-v` also prints it on stderr.  Guest text in
these lines has its control characters escaped like everything else shown.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from harness.printable import printable

ROOT = "harness"
FORMAT = "%(asctime)s.%(msecs)03d %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"


class _PrintableFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


class _QuietFileHandler(logging.FileHandler):
    """A debug log that cannot be written (a full disk) is not worth a traceback on stderr: the run's
    own outputs report the disk."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def _formatter() -> logging.Formatter:
    return _PrintableFormatter(FORMAT, DATEFMT)


def verbose_to_stderr() -> None:
    """-v: every debug line on stderr too."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter())
    logger.addHandler(handler)


@contextmanager
def kept_in(path: Path) -> Iterator[None]:
    """Every debug line of what runs inside, appended to `path` (a run's harness.log)."""
    logger = logging.getLogger(ROOT)
    try:
        handler = _QuietFileHandler(path, encoding="utf-8")
    except OSError:
        yield          # the run's own writes into the same directory will say what is wrong
        return
    handler.setFormatter(_formatter())
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
