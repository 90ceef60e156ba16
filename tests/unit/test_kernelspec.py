from pathlib import Path

import pytest

from harness.errors import ConfigError
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
