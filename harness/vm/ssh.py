"""SSH to the guest through paramiko: a key made for this run, the guest's host key pinned."""

from __future__ import annotations

import base64
import logging
import os
import select
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import paramiko

from harness.errors import CommandTimeout, GuestError, MachineLost
from harness.guest_data import MAX_JSON_LINE, GuestDataError

logger = logging.getLogger(__name__)

# What one guest command may print before the rest is counted and dropped: the largest legitimate
# output (the probe's full ring, 4 MiB) many times over, and a bound on what a flood costs the host.
OUTPUT_LIMIT = 16 << 20
STDERR_LIMIT = 1 << 20


@dataclass(frozen=True)
class CommandResult:
    argv: str
    exit_status: int
    stdout_bytes: bytes
    stderr: str
    duration_s: float
    dropped: int = 0     # bytes of output past OUTPUT_LIMIT / STDERR_LIMIT, not kept

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode(errors="replace")

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def make_run_key() -> tuple[paramiko.PKey, str]:
    """A fresh ECDSA P-256 key (fast to make, dropbear speaks it) and its public line."""
    key = paramiko.ECDSAKey.generate(bits=256)
    return key, f"{key.get_name()} {key.get_base64()}"


def _host_key(public_line: str) -> paramiko.PKey:
    key_type, data = public_line.split()[:2]
    return paramiko.ECDSAKey(data=base64.b64decode(data)) if key_type.startswith("ecdsa") \
        else paramiko.PKey.from_type_string(key_type, base64.b64decode(data))


def quote_argv(argv: Union[str, Sequence[str]]) -> str:
    """A guest command line: a list is quoted word by word; a str is a fixed script."""
    return argv if isinstance(argv, str) else " ".join(shlex.quote(str(a)) for a in argv)


def _exec(chan: paramiko.Channel, command: str, timeout: float) -> None:
    """Channel.exec_command, bounded: paramiko waits for the server's answer to the exec request
    without a limit, so a wedged guest whose sshd accepted the channel would hold the harness
    forever.  Closing the channel from a timer ends that wait."""
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        chan.close()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        chan.exec_command(command)
    except paramiko.SSHException:
        if fired.is_set():
            raise CommandTimeout(f"the guest did not start the command in {timeout:.0f} s: {command}") from None
        raise
    finally:
        timer.cancel()


def _nodelay_socket(port: int) -> socket.socket:
    """A TCP connection to the forwarded port with Nagle's algorithm off.  paramiko writes a
    handshake step or a command's stdin as several small segments; with Nagle on, each second
    segment waits for the first one's delayed ACK (40 ms on Linux), which made the handshake
    three to ten times slower than the guest's side of it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class SshSession:
    """One authenticated transport to the guest; commands run on channels of it."""

    def __init__(self, client: paramiko.SSHClient, port: int):
        self._client = client
        self.port = port

    @classmethod
    def connect(cls, port: int, key: paramiko.PKey, host_key: str, timeout: float,
                alive: Optional[Callable[[], bool]] = None) -> "SshSession":
        """Connect, retrying until `timeout` (sshd may still be starting).

        `alive` is polled between attempts so a dead QEMU ends the wait at once.
        """
        deadline = time.monotonic() + timeout
        last: Exception = GuestError("no attempt made")
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise GuestError("QEMU exited while connecting over SSH")
            client = paramiko.SSHClient()
            client.get_host_keys().add(f"[127.0.0.1]:{port}", host_key.split()[0], _host_key(host_key))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                # paramiko's Transport owns the socket from here: client.close() closes it.
                client.connect("127.0.0.1", port=port, username="root", pkey=key, sock=_nodelay_socket(port),
                               timeout=5, banner_timeout=5, auth_timeout=5,
                               allow_agent=False, look_for_keys=False)
                client.get_transport().set_keepalive(5)  # type: ignore[union-attr]
                logger.debug("ssh: connected to 127.0.0.1:%d in %.2f s", port, time.monotonic() - deadline + timeout)
                return cls(client, port)
            except paramiko.BadHostKeyException as e:
                client.close()
                raise GuestError(f"guest SSH host key does not match the initramfs's: {e}") from None
            except (OSError, paramiko.SSHException, EOFError) as e:
                client.close()
                last = e
                time.sleep(0.05)
        raise GuestError(f"SSH to 127.0.0.1:{port} failed for {timeout:.0f} s: {type(last).__name__}: {last}")

    def run(self, argv: Union[str, Sequence[str]], timeout: float = 60.0,
            stdin: Optional[bytes] = None, watch: Optional[Callable[[], None]] = None) -> CommandResult:
        """`watch` is called while the command runs (every 0.2 s at most) and raises MachineLost when
        the machine under the connection is gone, so a panic ends the wait at once, named as such."""
        start = time.monotonic()
        proc = self.start(argv, watch=watch, timeout=timeout)
        try:
            if stdin is not None:
                proc.write(stdin)
            status = proc.finish(start + timeout)
        except socket.timeout:
            raise CommandTimeout(f"guest command timed out after {timeout:.0f} s: {proc.command}") from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise proc.lost(f"failed ({type(e).__name__}: {e}) while running") from None
        logger.debug("ssh: %.300s -> status %d in %.2f s, %d bytes out%s", proc.command, status,
                     time.monotonic() - start, len(proc.out), f", {proc.dropped} dropped" if proc.dropped else "")
        return CommandResult(argv=proc.command, exit_status=status, stdout_bytes=bytes(proc.out),
                             stderr=proc.stderr.decode(errors="replace"), duration_s=time.monotonic() - start,
                             dropped=proc.dropped)

    def start(self, argv: Union[str, Sequence[str]], watch: Optional[Callable[[], None]] = None,
              timeout: float = 30.0) -> "RemoteProcess":
        """Start a command on a channel of its own; `timeout` bounds starting it and each send."""
        command = quote_argv(argv)
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise RemoteProcess.lost_connection(watch, "lost before running", command)
        try:
            chan = transport.open_session(timeout=10)
            chan.settimeout(timeout)
            _exec(chan, command, timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise RemoteProcess.lost_connection(watch, f"failed ({type(e).__name__}: {e}) while running",
                                                command) from None
        return RemoteProcess(chan, command, transport, watch)

    def put(self, data: bytes, guest_path: str, mode: int, timeout: float = 120.0) -> None:
        """Write `data` to `guest_path` with permission bits `mode`, over this connection (the guests
        have no 9p and the initramfs is fixed: this is how a reproducer gets in)."""
        result = self.run(["sh", "-c", 'cat > "$1" && chmod "$2" "$1"', "put", guest_path, f"{mode & 0o7777:o}"],
                          timeout=timeout, stdin=data)
        if not result.ok:
            raise GuestError(f"copying to {guest_path} in the guest failed: {result.stderr.strip()[-300:]}")

    def interactive(self) -> int:
        """A shell on the user's terminal until it exits; returns its exit status."""
        import termios
        import tty

        transport = self._client.get_transport()
        assert transport is not None
        chan = transport.open_session()
        size = os.get_terminal_size() if sys.stdin.isatty() else os.terminal_size((80, 24))
        chan.get_pty(term=os.environ.get("TERM", "vt100"), width=size.columns, height=size.lines)
        chan.invoke_shell()
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd) if sys.stdin.isatty() else None
        try:
            if saved is not None:
                tty.setraw(fd)
            while True:
                readable, _, _ = select.select([chan, fd], [], [])
                if chan in readable:
                    data = chan.recv(4096)
                    if not data:
                        break
                    os.write(sys.stdout.fileno(), data)
                if fd in readable:
                    data = os.read(fd, 4096)
                    if not data:
                        chan.shutdown_write()
                    else:
                        chan.sendall(data)
        finally:
            if saved is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        return chan.recv_exit_status()

    @property
    def active(self) -> bool:
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def cut(self) -> None:
        """Drop the TCP connection under the session, as a network failure would."""
        transport = self._client.get_transport()
        if transport is not None and transport.sock is not None:
            try:
                transport.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._client.close()


class RemoteProcess:
    """One guest command on its own SSH channel: run() collects it to the end, and a request/answer
    session (minivmm) reads it line by line.  Waits poll `watch`, so a panic or a dead QEMU ends
    them at once, named as such; stderr is collected on the side."""

    def __init__(self, chan: paramiko.Channel, command: str, transport: paramiko.Transport,
                 watch: Optional[Callable[[], None]]):
        self.command = command
        self._chan = chan
        self._transport = transport
        self._watch = watch
        self.out = bytearray()
        self.stderr = bytearray()
        self.dropped = 0
        self.eof = False

    @staticmethod
    def lost_connection(watch: Optional[Callable[[], None]], how: str, command: str) -> MachineLost:
        if watch is not None:
            watch()          # the machine's own account comes first (QEMU died, panic)
        return MachineLost("ssh-lost", f"SSH connection {how}: {command}")

    def lost(self, how: str = "dropped while running") -> MachineLost:
        return self.lost_connection(self._watch, how, self.command)

    def _pump(self, deadline: float, timed_out: str) -> None:
        """Move what has arrived into `out`/`stderr`, or wait up to 0.2 s for more; CommandTimeout
        (`timed_out`) past the deadline, MachineLost when the connection goes."""
        chan = self._chan
        if chan.recv_ready():
            data = chan.recv(65536)
            self.eof = self.eof or not data
            self._keep(self.out, data, OUTPUT_LIMIT)
        elif chan.recv_stderr_ready():
            self._keep(self.stderr, chan.recv_stderr(65536), STDERR_LIMIT)
        elif not self.eof and chan.eof_received:
            self.eof = True
        elif time.monotonic() > deadline:
            chan.close()
            raise CommandTimeout(timed_out)
        elif not self._transport.is_active():
            raise self.lost()
        else:
            if self._watch is not None:
                self._watch()
            select.select([chan], [], [], 0.2)

    def _keep(self, buf: bytearray, data: bytes, limit: int) -> None:
        """Append what fits under `limit`; count the rest (the channel is still drained, so the guest
        never blocks on a full window)."""
        room = max(limit - len(buf), 0)
        buf += data[:room]
        self.dropped += len(data) - min(room, len(data))

    def write(self, data: bytes) -> None:
        self._chan.sendall(data)

    def send_line(self, line: str) -> None:
        try:
            self.write(line.encode() + b"\n")
        except (OSError, paramiko.SSHException, EOFError):
            if not self._transport.is_active():
                raise self.lost() from None
            self.eof = True     # the process is gone; the next read says so

    def read_line(self, timeout: float) -> Optional[str]:
        """The next line without its newline; None at end of output; CommandTimeout if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            newline = self.out.find(b"\n")
            if newline >= 0:
                line = bytes(self.out[:newline])
                del self.out[:newline + 1]
                return line.decode(errors="replace")
            if self.eof:
                return None
            if len(self.out) > MAX_JSON_LINE:
                raise GuestDataError(self.command, f"a line longer than {MAX_JSON_LINE} bytes", self.out[:200])
            self._pump(deadline, f"no answer in {timeout:.0f} s from {self.command}")

    def finish(self, deadline: float) -> int:
        """Close stdin, collect the output to the end, and return the exit status."""
        chan = self._chan
        chan.shutdown_write()
        timeout = deadline - time.monotonic()
        while not (chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready()):
            self._pump(deadline, f"guest command timed out after {max(timeout, 0):.0f} s: {self.command}")
        status = chan.recv_exit_status()
        chan.close()
        if status == -1 and not self._transport.is_active():
            raise self.lost()   # a closed channel reports -1, not an exit
        return status

    def close(self, timeout: float = 10.0) -> Optional[int]:
        """Close stdin and wait for the exit status; None if it does not come in `timeout` or the
        connection is gone (whoever ends a session must not be stopped by its end)."""
        try:
            return self.finish(time.monotonic() + timeout)
        except (CommandTimeout, MachineLost, paramiko.SSHException, OSError, EOFError):
            self._chan.close()
            return None
