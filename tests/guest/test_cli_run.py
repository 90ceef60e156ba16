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


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_during_boot_leaves_no_qemu_and_no_private_dir(kernels, tmp_path, sig, code, said):
    out = tmp_path / "boot"
    # As from a terminal: a test run started in the background of a script inherits SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler at all.
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "boot", "--kernel", "debian:6.1", "--accel", "tcg",
                             "--out", str(out), "--command", "true"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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

