"""A guest whose sshd accepts a channel but never starts the command must not hold the harness:
the exec request is bounded by the command's time limit."""

from __future__ import annotations

import threading
import time

import paramiko
import pytest

from harness.errors import CommandTimeout
from harness.vm.ssh import _exec


class WedgedChannel:
    """exec_command waits for an answer that never comes, until the channel is closed (as paramiko's does)."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def exec_command(self, command: str) -> None:
        self.closed.wait()
        raise paramiko.SSHException("Channel closed.")

    def close(self) -> None:
        self.closed.set()


class AnsweringChannel(WedgedChannel):
    def exec_command(self, command: str) -> None:
        return None


def test_a_wedged_exec_is_a_timeout_naming_the_command():
    start = time.monotonic()
    with pytest.raises(CommandTimeout, match="did not start the command in 0 s: dmesg"):
        _exec(WedgedChannel(), "dmesg", 0.2)   # type: ignore[arg-type]
    assert time.monotonic() - start < 2


def test_an_answered_exec_leaves_the_channel_open():
    chan = AnsweringChannel()
    _exec(chan, "true", 0.2)   # type: ignore[arg-type]
    time.sleep(0.3)
    assert not chan.closed.is_set()


def test_the_connection_to_the_guest_has_nagle_off():
    """paramiko's handshake and a command's stdin go out as small segments; with Nagle on, each
    waits for the previous one's delayed ACK (40 ms), which tripled the handshake."""
    import socket

    from harness.vm.ssh import _nodelay_socket

    server = socket.create_server(("127.0.0.1", 0))
    try:
        sock = _nodelay_socket(server.getsockname()[1])
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            sock.close()
    finally:
        server.close()
