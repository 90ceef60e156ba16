import struct
from pathlib import Path

import pytest

from harness.artifacts.kernel import resolve_kernel
from harness.errors import ArtifactError, ConfigError
from harness.kernelspec import parse_kernel_spec


@pytest.mark.parametrize("text, series, abi, flavour, release", [
    ("debian:6.1", "6.1", "", "cloud-amd64", None),
    ("debian:6.12", "6.12", "", "cloud-amd64", None),
    ("debian:6.1.0-56", "6.1", "6.1.0-56", "cloud-amd64", "6.1.0-56-cloud-amd64"),
    ("debian:6.1.0-56-cloud-amd64", "6.1", "6.1.0-56", "cloud-amd64", "6.1.0-56-cloud-amd64"),
    ("debian:6.12.117+deb12", "6.12", "6.12.117+deb12", "cloud-amd64", "6.12.117+deb12-cloud-amd64"),
    ("debian:6.12.117+deb12-amd64", "6.12", "6.12.117+deb12", "amd64", "6.12.117+deb12-amd64"),
])
def test_debian_specs(text, series, abi, flavour, release):
    spec = parse_kernel_spec(text)
    assert (spec.kind, spec.series, spec.abi, spec.flavour) == ("debian", series, abi, flavour)
    if release:
        assert spec.debian_release == release
    else:
        with pytest.raises(ValueError):
            spec.debian_release


def test_tree_and_image_specs():
    tree = parse_kernel_spec("tree:/src/linux")
    assert tree.kind == "tree" and tree.path == Path("/src/linux")
    image = parse_kernel_spec("image:/boot/vmlinuz,modules=/lib/modules/x")
    assert image.kind == "image" and image.path == Path("/boot/vmlinuz") and image.modules == Path("/lib/modules/x")


@pytest.mark.parametrize("text, message", [
    ("", "empty kernel spec"),
    ("6.1", "kernel spec '6.1' has no kind"),
    ("debian:", "kernel spec 'debian:' has no kind"),
    ("fedora:39", "unknown kind 'fedora'"),
    ("debian:6", "'6' is not a Debian kernel series"),
    ("image:/boot/vmlinuz", "needs its modules directory: image:PATH,modules=DIR"),
    ("image:/boot/vmlinuz,mods=/x", "unknown option 'mods=/x'"),
    ("image:,modules=/x", "names no image file"),
])
def test_bad_specs(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_kernel_spec(text)


@pytest.mark.parametrize("text, message", [
    ("tree:~nosuchuser/x", "cannot expand ~nosuchuser: there is no user 'nosuchuser'; write the path in full"),
    ("image:~nosuchuser/vmlinuz,modules=/x", "cannot expand ~nosuchuser: there is no user 'nosuchuser'"),
    ("image:/vmlinuz,modules=~nosuchuser", "cannot expand ~nosuchuser: there is no user 'nosuchuser'"),
    ("tree:/src/li\0nux", "contains a NUL byte"),
])
def test_paths_that_cannot_be_had(text, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_kernel_spec(text)
    assert "\n" not in str(err.value)


def test_a_tree_spec_with_no_such_user_on_the_command_line(capsys):
    from harness.cli import main
    assert main(["run", "--kernel", "tree:~nosuchuser/x", "--scenario", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tree:~nosuchuser/x" in err and "Traceback" not in err


def bzimage(version: bytes, terminated: bool = True) -> bytes:
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x300)
    image[0x500:0x500 + len(version)] = version
    if not terminated:
        image[0x500 + len(version):] = b"x" * (0x1000 - 0x500 - len(version))
    return bytes(image)


@pytest.mark.parametrize("image, message", [
    (b"", r"arch/x86/boot/bzImage is not an x86 bzImage \(no HdrS setup header; the file is empty\)"),
    (b"\x7fELF" + bytes(100), r"arch/x86/boot/bzImage is not an x86 bzImage \(no HdrS setup header\)"),
    (bzimage(b"6.1.0-x", terminated=False), r"arch/x86/boot/bzImage: the kernel version string at offset "
                                            r"0x500 is not NUL-terminated; not a usable bzImage"),
    (bzimage(b""), r"arch/x86/boot/bzImage: the kernel version string at offset 0x500 is empty"),
])
def test_a_tree_with_a_bad_bzimage(tmp_path, image, message):
    path = tmp_path / "arch" / "x86" / "boot" / "bzImage"
    path.parent.mkdir(parents=True)
    path.write_bytes(image)
    with pytest.raises(ArtifactError, match=message) as err:
        resolve_kernel(parse_kernel_spec(f"tree:{tmp_path}"), tmp_path / "cache")
    assert "\n" not in str(err.value)


def test_a_tree_with_a_good_bzimage_knows_its_config(tmp_path):
    path = tmp_path / "arch" / "x86" / "boot" / "bzImage"
    path.parent.mkdir(parents=True)
    path.write_bytes(bzimage(b"6.1.0-x (gcc) #1"))
    kernel = resolve_kernel(parse_kernel_spec(f"tree:{tmp_path}"), tmp_path / "cache")
    assert (kernel.release, kernel.config) == ("6.1.0-x", tmp_path / ".config")


@pytest.mark.parametrize("text", ["tree:/" + "a" * 5000, "image:/" + "a" * 5000 + ",modules=/tmp"])
def test_a_path_the_system_refuses(text):
    with pytest.raises(ArtifactError, match=r"File name too long") as err:
        resolve_kernel(parse_kernel_spec(text), Path("/nonexistent-cache"))
    assert "\n" not in str(err.value)
