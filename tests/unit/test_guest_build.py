"""The probe module's cache entry: keyed by the kernel's .config, built whole or not at all.

A fake kernel build directory stands in for Kbuild: its Makefile counts its
runs and drops a module with the right vermagic where Kbuild would."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from harness.artifacts import publish as pub
from harness.artifacts.guest_build import build_probe_module
from harness.artifacts.kernel import Kernel
from harness.errors import ArtifactError
from harness.kernelspec import parse_kernel_spec
from tests.unit.fake_modules import make_module

REL = "6.1.0-test"


def fake_build_dir(root: Path, vermagic: str = f"{REL} SMP mod_unload") -> Path:
    make_module(root / "prebuilt.ko", vermagic=vermagic)
    (root / "Makefile").write_text(f"modules:\n\t@echo run >> {root}/runs\n\t@cp {root}/prebuilt.ko $(M)/nh_probe.ko\n")
    (root / ".config").write_text("CONFIG_MMU_NOTIFIER=y\n")
    return root


def kernel_for(build_dir: Path) -> Kernel:
    return Kernel(spec=parse_kernel_spec(f"tree:{build_dir}"), release=REL, image=build_dir / "bzImage",
                  modules_dir=build_dir, build_dir=build_dir, config=build_dir / ".config")


def runs(build_dir: Path) -> int:
    f = build_dir / "runs"
    return len(f.read_text().splitlines()) if f.exists() else 0


def test_built_once_and_reused(tmp_path):
    kdir, cache = fake_build_dir(tmp_path / "linux"), tmp_path / "cache"
    first = build_probe_module(kernel_for(kdir), cache)
    assert build_probe_module(kernel_for(kdir), cache) == first and runs(kdir) == 1
    assert first.name == "nh_probe.ko" and first.read_bytes() == (kdir / "prebuilt.ko").read_bytes()
    # The entry holds the module and its marker; the build's sources are gone.
    assert sorted(p.name for p in first.parent.iterdir()) == [".complete", "nh_probe.ko"]
    assert [p.name for p in (cache / "modules").iterdir() if not p.name.startswith(".")] == [first.parent.name]


def test_a_changed_config_rebuilds_the_module(tmp_path):
    kdir, cache = fake_build_dir(tmp_path / "linux"), tmp_path / "cache"
    first = build_probe_module(kernel_for(kdir), cache)
    (kdir / ".config").write_text("CONFIG_MMU_NOTIFIER=y\nCONFIG_KVM=m\n")
    second = build_probe_module(kernel_for(kdir), cache)
    assert second != first and runs(kdir) == 2
    (kdir / ".config").write_text("CONFIG_MMU_NOTIFIER=y\n")
    assert build_probe_module(kernel_for(kdir), cache) == first and runs(kdir) == 2


def test_the_config_file_a_kernel_names_is_the_one_hashed(tmp_path):
    # Debian's headers may lack .config; boot/config-<release> is then the kernel's config.
    kdir, cache = fake_build_dir(tmp_path / "headers"), tmp_path / "cache"
    (kdir / ".config").unlink()
    boot_config = tmp_path / f"config-{REL}"
    boot_config.write_text("CONFIG_A=y\n")
    kernel = Kernel(spec=parse_kernel_spec("debian:6.1"), release=REL, image=tmp_path / "vmlinuz",
                    modules_dir=kdir, build_dir=kdir, config=boot_config)
    first = build_probe_module(kernel, cache)
    boot_config.write_text("CONFIG_A=n\n")
    assert build_probe_module(kernel, cache) != first


def test_a_module_for_another_release_is_not_cached(tmp_path):
    kdir, cache = fake_build_dir(tmp_path / "linux", vermagic="6.1.0-other SMP"), tmp_path / "cache"
    with pytest.raises(ArtifactError, match=r"built for \['6.1.0-other'\], not 6.1.0-test"):
        build_probe_module(kernel_for(kdir), cache)
    assert [p.name for p in (cache / "modules").iterdir() if not p.name.endswith(".lock")] == []


def test_a_truncated_built_module_is_one_line(tmp_path):
    kdir, cache = fake_build_dir(tmp_path / "linux"), tmp_path / "cache"
    data = (kdir / "prebuilt.ko").read_bytes()
    (kdir / "prebuilt.ko").write_bytes(data[:64])
    with pytest.raises(ArtifactError, match=r"^the probe module built for 6.1.0-test is unreadable: truncated"):
        build_probe_module(kernel_for(kdir), cache)


@pytest.mark.parametrize("step", pub.STEPS[:-1])
def test_killed_while_publishing_the_next_run_rebuilds(tmp_path, step):
    kdir, cache = fake_build_dir(tmp_path / "linux"), tmp_path / "cache"
    pid = os.fork()
    if pid == 0:  # the run that is killed
        def kill(at: str, path: Path) -> None:
            if at == step:
                os.kill(os.getpid(), signal.SIGKILL)
        pub.on_step = kill
        try:
            build_probe_module(kernel_for(kdir), cache)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    path = build_probe_module(kernel_for(kdir), cache)
    assert runs(kdir) == (2 if step in ("built", "marked") else 1)
    assert path.read_bytes() == (kdir / "prebuilt.ko").read_bytes()
    assert sorted(p.name for p in (cache / "modules").iterdir()) == [f".{path.parent.name}.lock", path.parent.name]
