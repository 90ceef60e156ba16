"""QMP through qemu.qmp's synchronous client: a thin layer that turns its
errors into MachineError and keeps every event it sees."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from harness.errors import MachineError

logger = logging.getLogger(__name__)
COMMAND_TIMEOUT_S = 15.0


class Monitor:
    """QEMU serves QMP on a unix socket in the run's private directory."""

    def __init__(self, socket_path: Path):
        self.socket_path = socket_path
        self.events: list[dict[str, Any]] = []
        self._qmp: Optional[QEMUMonitorProtocol] = None

    def connect(self, timeout: float, alive: Callable[[], bool]) -> None:
        """Connect once QEMU has made the socket; stop at once if QEMU dies."""
        deadline = time.monotonic() + timeout
        last: Exception = MachineError("no attempt")
        while time.monotonic() < deadline:
            if not alive():
                raise MachineError("QEMU exited before its QMP socket came up")
            if self.socket_path.exists():
                qmp = QEMUMonitorProtocol(str(self.socket_path))
                try:
                    qmp.connect(negotiate=True)
                except (OSError, QMPError, EOFError) as e:
                    last = e
                    qmp.close()
                else:
                    # A wedged QEMU must not hang a command forever.
                    qmp.settimeout(COMMAND_TIMEOUT_S)
                    self._qmp = qmp
                    return
            time.sleep(0.01)
        raise MachineError(f"QMP socket {self.socket_path} did not answer within {timeout:.0f} s: {last}")

    def command(self, name: str, **args: Any) -> Any:
        if self._qmp is None:
            raise MachineError(f"QMP {name}: the monitor is closed")
        logger.debug("QMP -> %s %s", name, args or "")
        try:
            answer = self._qmp.cmd(name, **args)
        except (OSError, QMPError, EOFError, asyncio.TimeoutError) as e:
            logger.debug("QMP <- %s failed: %s: %s", name, type(e).__name__, e)
            raise MachineError(f"QMP {name} failed: {type(e).__name__}: {e}") from None
        logger.debug("QMP <- %s: %.500s", name, answer)
        return answer

    def status(self) -> str:
        return str(self.command("query-status")["status"])

    def poll_events(self) -> list[dict[str, Any]]:
        """Events that arrived since the last poll (also kept in .events)."""
        if self._qmp is None:
            return []
        new: list[dict[str, Any]] = []
        try:
            while True:
                event = self._qmp.pull_event(wait=False)
                if event is None:
                    break
                new.append(event)
        except (OSError, QMPError, EOFError):
            pass
        for event in new:
            logger.debug("QMP event %s", event.get("event"))
        self.events.extend(new)
        return new

    def close(self) -> None:
        if self._qmp is not None:
            qmp, self._qmp = self._qmp, None
            try:
                qmp.close()
            except (OSError, QMPError, EOFError, asyncio.TimeoutError):
                pass
