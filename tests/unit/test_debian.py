from pathlib import Path

import pytest

from harness.artifacts import debian
from harness.artifacts.debian import pick_newest_release
from harness.errors import ArtifactError

NAMES = [
    "linux-image-6.1.0-9-cloud-amd64", "linux-image-6.1.0-56-cloud-amd64", "linux-image-6.1.0-55-cloud-amd64",
    "linux-image-6.1.0-56-cloud-amd64-dbg", "linux-image-6.1.0-56-cloud-amd64-unsigned",
    "linux-image-6.1.0-56-amd64", "linux-image-6.12.9+deb12-cloud-amd64",
    "linux-image-6.12.117+deb12-cloud-amd64", "linux-image-6.12.48+deb12-cloud-amd64",
    "linux-image-6.12-cloud-amd64", "linux-image-cloud-amd64",
]


def test_newest_6_1_is_by_abi_number_not_string_order():
    assert pick_newest_release(NAMES, "6.1", "cloud-amd64") == "6.1.0-56-cloud-amd64"


def test_newest_6_12_skips_meta_packages():
    assert pick_newest_release(NAMES, "6.12", "cloud-amd64") == "6.12.117+deb12-cloud-amd64"


def test_flavour_and_absence():
    assert pick_newest_release(NAMES, "6.1", "amd64") == "6.1.0-56-amd64"
    assert pick_newest_release(NAMES, "5.10", "cloud-amd64") is None


REL = "6.1.0-99-cloud-amd64"


def fake_apt(calls: list):
    """apt-cache, apt-get download and dpkg-deb as far as fetch() uses them."""
    def run(argv, cwd=None):
        calls.append(argv[0])
        if argv[:2] == ["apt-cache", "pkgnames"]:
            return f"linux-image-{REL}\n"
        if argv[0] == "apt-get":
            (cwd / "linux-image.deb").write_text("")
            return ""
        if argv[0] == "dpkg-deb":
            root = Path(argv[3])
            for f in (f"boot/vmlinuz-{REL}", f"lib/modules/{REL}/modules.builtin",
                      f"usr/src/linux-headers-{REL}/Makefile"):
                (root / f).parent.mkdir(parents=True, exist_ok=True)
                (root / f).write_text("include /usr/src/linux-headers-common/Makefile\n")
            return ""
        raise AssertionError(argv)
    return run


def test_fetch_publishes_one_whole_tree_and_sweeps_what_a_killed_run_left(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(debian, "_run", fake_apt(calls))
    monkeypatch.setattr(debian, "_package_set", lambda release: [f"linux-image-{release}"])
    kinds = tmp_path / "kernels" / "debian"
    # A SIGKILLed download, and an unpacking that never finished (no marker).
    (kinds / f".{REL}.tmp-dead" / ".debs").mkdir(parents=True)
    (kinds / REL / "boot").mkdir(parents=True)
    kernel = debian.fetch(REL, tmp_path)
    assert kernel.root == kinds / REL and (kernel.root / ".complete").is_file()
    assert kernel.image.is_file() and not (kernel.root / ".debs").exists()
    assert "include ../linux-headers-common/Makefile" in (kernel.headers_dir / "Makefile").read_text()
    assert sorted(p.name for p in kinds.iterdir()) == [f".{REL}.lock", REL]
    calls.clear()
    assert debian.fetch(REL, tmp_path) == kernel and calls == []


def test_a_failed_download_leaves_nothing(tmp_path, monkeypatch):
    def run(argv, cwd=None):
        if argv[0] == "apt-get":
            raise ArtifactError("apt-get download failed: E: Unable to fetch")
        return f"linux-image-{REL}\n"
    monkeypatch.setattr(debian, "_run", run)
    monkeypatch.setattr(debian, "_package_set", lambda release: [f"linux-image-{release}"])
    with pytest.raises(ArtifactError, match="Unable to fetch"):
        debian.fetch(REL, tmp_path)
    assert [p.name for p in (tmp_path / "kernels" / "debian").iterdir()] == [f".{REL}.lock"]
