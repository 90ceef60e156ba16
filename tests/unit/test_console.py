"""The console reader against a hostile guest: a flood costs bounded memory and disk, a full disk is
reported instead of silently ending the drain, and markers are still found."""

import os
import threading
from pathlib import Path

from harness.vm import console as console_mod
from harness.vm.console import Console
from harness.vm.qemu_args import READY_MARKER


def _feed(chunks: list[bytes]):
    r, w = os.pipe()

    def writer() -> None:
        with os.fdopen(w, "wb", buffering=0) as out:
            for chunk in chunks:
                out.write(chunk)
    thread = threading.Thread(target=writer)
    thread.start()
    return os.fdopen(r, "rb", buffering=0), thread


def test_a_flood_without_markers_is_kept_bounded_and_drained(tmp_path: Path):
    last = f"\n{READY_MARKER} after the flood\n".encode()
    stream, thread = _feed([b"A" * (1 << 20)] * 24 + [last])
    console = Console(stream, tmp_path / "console.log", log_limit=4 << 20)
    thread.join(30)
    assert console.wait(console.ready, 30), "the marker after the flood was not seen: the reader stopped"
    console.close()
    log = (tmp_path / "console.log").read_bytes()
    assert len(log) < (4 << 20) + 200
    assert b"console output past 4 MiB of this boot is not kept" in log
    assert console.dropped >= 20 << 20
    # pexpect's `before` buffer is what held a flood whole.
    assert console._child._before.tell() <= console_mod._BEFORE_LIMIT + console._child.maxread
    assert console.bytes_seen == 24 * (1 << 20) + len(last)


def test_a_full_disk_is_recorded_and_the_guest_still_drained():
    stream, thread = _feed([b"boot line\n" * 1000, f"{READY_MARKER}\n".encode()])
    console = Console(stream, Path("/dev/full"))
    thread.join(10)
    assert console.wait(console.ready, 10)
    assert "No space left on device" in console.write_error and "/dev/full" in console.write_error
    console.close()


def test_init_steps_are_read_and_a_boot_is_broken_down(tmp_path: Path):
    from harness.bench import boot_steps
    lines = b"NH-INIT: at init 1.250\nNH-INIT: at modules 1.500\r\nNH-INIT: at network 1.600\n" \
            b"NH-INIT: at sshd 1.700\n" + f"{READY_MARKER} 6.1\n".encode()
    stream, thread = _feed([lines])
    console = Console(stream, tmp_path / "console.log")
    thread.join(10)
    assert console.wait(console.ready, 10)
    console.close()
    assert console.boot_steps == {"init": 1.25, "modules": 1.5, "network": 1.6, "sshd": 1.7}
    assert not console.wait_step("settled", 0.1)
    steps = boot_steps(console.boot_steps, ready_s=2.5, boot_s=2.9)
    assert {k: round(v, 3) for k, v in steps.items()} == {"init": 1.25, "modules": 0.25, "network": 0.1,
                                                          "sshd": 0.1, "firmware": 0.8, "ssh": 0.4}


def test_settled_is_seen_after_the_ready_marker(tmp_path: Path):
    # acpid starts after the marker; the harness presses the power button only once init says so.
    stream, thread = _feed([f"{READY_MARKER} 6.1\n".encode(), b"NH-INIT: at settled 2.100\n"])
    console = Console(stream, tmp_path / "console.log")
    thread.join(10)
    assert console.wait_step("settled", 10)
    console.close()
    assert console.boot_steps["settled"] == 2.1
