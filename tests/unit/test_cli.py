"""Bad input at the command line: one line on stderr, exit 2, no traceback, no VM."""

import pytest

from harness.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_missing_config(capsys, tmp_path):
    code, _, err = run(capsys, "run", "-c", str(tmp_path / "none.yaml"))
    assert code == 2
    assert err == f"notifier-harness: error: config file {tmp_path / 'none.yaml'} does not exist\n"


def test_unknown_scenario_names_the_valid_ones(capsys):
    code, _, err = run(capsys, "run", "--scenario", "nosuch")
    from harness.scenarios import SCENARIOS
    assert code == 2 and f"--scenario: unknown scenario 'nosuch'; valid scenarios: {', '.join(sorted(SCENARIOS))}" \
        in err
    assert err.count("\n") == 1


def test_bad_kernel_spec(capsys):
    code, _, err = run(capsys, "run", "--kernel", "debian:bookworm")
    assert code == 2 and "'bookworm' is not a Debian kernel series" in err and "Traceback" not in err


def test_kernel_tree_that_does_not_exist(capsys, tmp_path):
    code, out, err = run(capsys, "run", "--kernel", f"tree:{tmp_path}/linux", "--out", str(tmp_path / "run"))
    # The run itself goes on and records an error row for the kernel.
    assert code == 2
    assert f"kernel tree {tmp_path}/linux does not exist" in out
    assert (tmp_path / "run" / "results.json").exists()


def test_argparse_rejects_bad_accel(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--accel", "xen"])
    assert e.value.code == 2


def test_list(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0 and "smoke" in out and "debian:6.1" in out


def test_missing_qemu_binary_is_one_clear_error(tmp_path):
    from harness.artifacts.boot_image import BootImage
    from harness.config import MachineConfig
    from harness.errors import MachineError
    from harness.vm.accel import AccelChoice
    from harness.vm.machine import Machine

    image = BootImage(kernel=tmp_path / "k", initrd=tmp_path / "i", host_key="ecdsa-sha2-nistp256 AAAA")
    m = Machine(image, MachineConfig(), AccelChoice("tcg", "test", False), tmp_path, qemu="qemu-system-none")
    with pytest.raises(MachineError, match="QEMU binary qemu-system-none not found; install the Debian package "
                                           "qemu-system-x86"):
        m.boot()
    assert m.proc is None
