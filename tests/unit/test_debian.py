from harness.artifacts.debian import pick_newest_release

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
