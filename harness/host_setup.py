"""Install the Debian packages the harness needs, or say exactly what is missing.

Run as `python3 -m harness.host_setup` by `make setup`, before the virtualenv
exists, so this module uses the standard library only.  It is idempotent: when
every tool is present and apt knows the kernel packages, it changes nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# Debian package -> a file that shows it is installed.
PACKAGES = {
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    "busybox-static": "/bin/busybox",
    "dropbear-bin": "/usr/sbin/dropbear",
    "cpio": "/usr/bin/cpio",
    "gcc": "/usr/bin/gcc",
    "make": "/usr/bin/make",
    "libc6-dev": "/usr/include/stdio.h",
    "xz-utils": "/usr/bin/xz",
    # 6.12 headers ship vmlinux, so a module build also makes its BTF with pahole.
    "dwarves": "/usr/bin/pahole",
}


def missing_packages() -> list[str]:
    return [pkg for pkg, path in PACKAGES.items() if not os.path.exists(path)]


def apt_knows_kernels() -> bool:
    """Debian kernels are fetched with apt-get download, which needs package lists."""
    try:
        out = subprocess.run(["apt-cache", "pkgnames", "linux-image-6.1"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(out.strip())


def privilege_prefix() -> list[str] | None:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def main() -> int:
    missing = missing_packages()
    need_update = not apt_knows_kernels()
    if not missing and not need_update:
        print("setup: Debian packages present")
        return 0
    prefix = privilege_prefix()
    if prefix is None:
        what = []
        if need_update:
            what.append("apt-get update")
        if missing:
            what.append("apt-get install -y " + " ".join(missing))
        print("setup: notifier-harness needs root or password-less sudo to run: " + " && ".join(what)
              + "\nsetup: run that as root, then this command again", file=sys.stderr)
        return 2
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps = [prefix + ["apt-get", "update", "-q"]]
    if missing:
        print(f"setup: installing {' '.join(missing)}")
        steps.append(prefix + ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing])
    for argv in steps:
        proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"setup: {' '.join(argv)} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 2
    still = missing_packages()
    if still:
        print(f"setup: still missing after install: {' '.join(still)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
