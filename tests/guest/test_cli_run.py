"""The CLI end to end: `run` writes its results; Ctrl-C during boot leaves nothing behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.vm.machine import port_is_free
from tests.guest.conftest import pid_alive, qemu_running


def test_run_smoke_on_6_1_writes_results_and_junit(kernels, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--kernel", "debian:6.1", "--scenario", "smoke", "--accel", "tcg", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    doc = json.loads((out / "results.json").read_text())
    [row] = doc["results"]
    assert row["kernel"] == kernels["6.1"].kernel.release and row["kernel_spec"] == "debian:6.1"
    assert (row["scenario"], row["verdict"], row["accel"], row["findings"]) == ("smoke", "pass", "tcg", [])
    assert any("/dev/kvm present" in n for n in row["notes"])
    assert doc["run"]["kernels"][0]["shutdown"] == "powerdown"
    assert (out / "junit.xml").read_text().count("<testcase") == 1
    assert (out / "config.json").exists() and (out / row["kernel"] / "console.log").exists()
    assert "accel: tcg" in printed


def _boot(out: Path, command: str) -> subprocess.Popen[str]:
    # As from a terminal: a test run started in the background of a script inherits SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler at all.
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "boot", "--kernel", "debian:6.1", "--accel", "tcg",
                             "--out", str(out), "--command", command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _booted_qemu(proc: subprocess.Popen[str], out: Path) -> int:
    """Wait for the harness's "booted" line; QEMU's pid."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("booted"):
            break
    else:
        raise AssertionError(f"never booted: {proc.communicate()}")
    [qemu] = qemu_running(json.loads((out / "qemu-argv.json").read_text()))
    return qemu


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated by SIGTERM"),
                                             (signal.SIGHUP, 129, "terminated by SIGHUP")])
def test_ctrl_c_sigterm_or_sighup_during_boot_leaves_no_qemu_and_no_private_dir(kernels, tmp_path, sig, code, said):
    out = tmp_path / "boot"
    proc = _boot(out, "true")
    # console.log appears right after QEMU started, a second or more before the kernel's first line
    # and two before SSH: the signal lands in the middle of the boot.
    console = out / "console.log"
    deadline = time.monotonic() + 60
    while not console.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    argv = json.loads((out / "qemu-argv.json").read_text())
    qemu = qemu_running(argv)
    assert len(qemu) == 1
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, (stdout, stderr)
    assert "booted" not in stdout, "the signal came after the boot: the test did not test a boot"
    assert said in stderr and "Traceback" not in stderr
    assert not pid_alive(qemu[0])
    qmp_socket = Path(next(a for a in argv if a.startswith("socket,id=qmp")).split("path=")[1].split(",")[0])
    assert not qmp_socket.parent.exists()
    hostfwd = next(a for a in argv if "hostfwd" in a)
    assert port_is_free(int(hostfwd.split("127.0.0.1:")[1].split("-")[0]))



def test_a_second_sigterm_during_the_powerdown_still_kills_qemu(kernels, tmp_path):
    """The first SIGTERM starts the soft shutdown (powerdown, up to 10 s); the second lands in its
    wait and must go straight to the SIGKILL, not skip it."""
    out = tmp_path / "twice"
    proc = _boot(out, "sleep 60")
    qemu = _booted_qemu(proc, out)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "terminated by SIGTERM" in stderr and "Traceback" not in stderr
    assert _gone_within(qemu, 5)


def test_a_sigkilled_harness_takes_its_qemu_with_it(kernels, tmp_path):
    out = tmp_path / "killed"
    proc = _boot(out, "sleep 60")
    qemu = _booted_qemu(proc, out)
    proc.kill()
    proc.communicate(timeout=30)
    assert _gone_within(qemu, 5), "QEMU outlived a SIGKILLed harness"


def test_boot_put_round_trips_bytes_and_mode(kernels, tmp_path, capsys):
    import hashlib
    import os
    from harness.cli import main
    local = tmp_path / "repro.bin"
    data = os.urandom(1 << 20) + b"\x00\xff\n"
    local.write_bytes(data)
    local.chmod(0o640)
    code = main(["boot", "--kernel", "debian:6.1", "--accel", "tcg", "--out", str(tmp_path / "boot"),
                 "--put", f"{local}:/root/in-guest.bin", "--put", str(local),
                 "--command", "sha256sum /root/in-guest.bin /tmp/repro.bin; stat -c %a /root/in-guest.bin"])
    out = capsys.readouterr().out
    assert code == 0, out
    digest = hashlib.sha256(data).hexdigest()
    assert f"{digest}  /root/in-guest.bin" in out and f"{digest}  /tmp/repro.bin" in out
    assert out.rstrip().endswith("640")


def test_validate_a_kernel_against_itself_finds_no_regression(kernels, tmp_path, capsys):
    from harness.cli import main
    out = tmp_path / "validate"
    code = main(["validate", "--baseline", "debian:6.1", "--kernel", "debian:6.1", "--accel", "tcg",
                 "--scenario", "smoke", "--scenario", "mm-basic", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "no scenario changed (2 compared)" in printed
    for side in ("baseline", "patched"):
        rows = json.loads((out / side / "results.json").read_text())["results"]
        assert [(r["scenario"], r["verdict"]) for r in rows] == [("smoke", "pass"), ("mm-basic", "pass")]
