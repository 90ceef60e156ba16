import pytest

from harness.artifacts.modules import ModuleIndex, module_name, parse_modinfo, read_module_bytes
from harness.errors import ArtifactError
from tests.unit.fake_modules import make_module, make_module_tree


def test_module_names_normalise_dashes_and_suffixes(tmp_path):
    assert module_name(tmp_path / "kvm-amd.ko.xz") == "kvm_amd"
    assert module_name(tmp_path / "virtio_net.ko") == "virtio_net"


@pytest.mark.parametrize("xz", [False, True])
def test_modinfo_of_plain_and_xz_modules(tmp_path, xz):
    path = make_module(tmp_path / ("m.ko.xz" if xz else "m.ko"), depends="a,b", vermagic="6.12.1 SMP", xz=xz)
    info = parse_modinfo(read_module_bytes(path))
    assert info["depends"] == ["a,b"] and info["vermagic"] == ["6.12.1 SMP"] and info["license"] == ["GPL"]


def test_not_elf_is_refused(tmp_path):
    with pytest.raises(ValueError):
        parse_modinfo(b"not an elf at all, clearly" * 4)


def test_closure_orders_dependencies_first(tmp_path):
    index = ModuleIndex.scan(make_module_tree(tmp_path / "mods", xz=True))
    names = [m.name for m in index.closure(["kvm_amd", "virtio_net"])]
    assert names == ["irqbypass", "kvm", "kvm_amd", "failover", "net_failover", "virtio_ring", "virtio",
                     "virtio_net"]
    assert "kvm-amd" in index and "evdev" not in index


def test_missing_dependency_is_an_error(tmp_path):
    make_module(tmp_path / "a.ko", depends="nothere")
    with pytest.raises(ArtifactError, match="kernel module nothere is not in"):
        ModuleIndex.scan(tmp_path).closure(["a"])


def test_missing_directory(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        ModuleIndex.scan(tmp_path / "none")


def test_a_module_cut_anywhere_is_a_valueerror(tmp_path):
    data = make_module(tmp_path / "m.ko").read_bytes()
    for cut in list(range(0, 0x48)) + list(range(0x48, len(data), 7)):
        try:
            parse_modinfo(data[:cut])
        except ValueError:
            continue
        # Only a cut past the .modinfo bytes and the section headers can still parse.
        assert cut >= len(data) - 0x40 * 3, cut


@pytest.mark.parametrize("size", [5, 64, 400])
def test_a_truncated_module_in_the_tree_is_one_line(tmp_path, size):
    # An interrupted copy: the first bytes of a real module, ELF header and all.
    path = make_module(tmp_path / "mods" / "kernel" / "virtio_net.ko")
    data = path.read_bytes()
    assert len(data) > size
    path.write_bytes(data[:size])
    index = ModuleIndex.scan(tmp_path / "mods")
    with pytest.raises(ArtifactError, match=r"^kernel module .*virtio_net\.ko is unreadable: "
                                            r"(truncated|not a little-endian ELF64 object)") as err:
        index.get("virtio_net")
    assert "\n" not in str(err.value)
