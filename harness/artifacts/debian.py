"""Debian kernel packages, fetched without installing anything.

`apt-get download` brings the image, headers, common headers and kbuild
packages of one exact kernel ABI; `dpkg-deb -x` unpacks them into a cache
directory keyed by the release.  The headers' top Makefile includes the
`-common` tree by its absolute /usr/src path; it is rewritten to point into
the cache so out-of-tree modules build against the extraction as it lies.
The extraction is one cache entry (harness.artifacts.publish): concurrent runs
share one download, and the packages themselves are not kept.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from harness.artifacts.publish import is_complete, publish
from harness.errors import ArtifactError
from harness.kernelspec import KernelSpec


def _run(argv: Sequence[str], cwd: Optional[Path] = None) -> str:
    """Run an apt/dpkg tool; its own error text ends up in the exception."""
    try:
        proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise ArtifactError(f"{argv[0]} is not installed; Debian kernels need apt-get and dpkg-deb") from None
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"{' '.join(argv)} took more than 10 minutes") from None
    if proc.returncode != 0:
        errors = [l for l in proc.stderr.splitlines() if l.startswith("E:")] or proc.stderr.splitlines()[-1:]
        raise ArtifactError(f"{' '.join(argv)} failed: {' '.join(errors) or 'exit ' + str(proc.returncode)}")
    return proc.stdout


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text))


def pick_newest_release(package_names: Sequence[str], series: str, flavour: str) -> Optional[str]:
    """The newest `uname -r` among linux-image package names for one series.

    Debian names 6.1 kernels by ABI (linux-image-6.1.0-56-cloud-amd64) and 6.12
    ones by upstream version (linux-image-6.12.117+deb12-cloud-amd64).  Meta
    packages, -unsigned and -dbg variants do not match.
    """
    pattern = re.compile(
        rf"^linux-image-({re.escape(series)}\.\d+(?:-\d+|\+deb\d+)-{re.escape(flavour)})$")
    releases = [m.group(1) for m in map(pattern.match, package_names) if m]
    return max(releases, key=_version_key) if releases else None


def resolve_release(spec: KernelSpec, cache: Path) -> str:
    """Turn a debian: spec into an exact release, asking apt for a series."""
    if spec.abi:
        return spec.debian_release
    try:
        names = _run(["apt-cache", "pkgnames", f"linux-image-{spec.series}."]).split()
    except ArtifactError as e:
        names, apt_error = [], str(e)
    else:
        apt_error = ""
    newest = pick_newest_release(names, spec.series, spec.flavour)
    if newest:
        return newest
    # apt knows nothing (no lists yet, or offline): a cached kernel of the series still serves.
    cached = [p.name for p in (cache / "kernels" / "debian").glob("*") if is_complete(p)]
    newest = pick_newest_release([f"linux-image-{n}" for n in cached], spec.series, spec.flavour)
    if newest:
        return newest
    raise ArtifactError(f"{spec.text}: apt knows no linux-image-{spec.series}.*-{spec.flavour} package"
                        f"{' (' + apt_error + ')' if apt_error else ''}; run 'apt-get update' "
                        f"(make setup does) or name an exact version")


@dataclass(frozen=True)
class DebianKernel:
    release: str
    root: Path          # the extraction: boot/, lib/modules/, usr/src/
    image: Path
    modules_dir: Path
    headers_dir: Path   # usable as `make -C headers_dir M=...`


def _paths(release: str, root: Path) -> DebianKernel:
    modules = root / "lib" / "modules" / release
    if not modules.is_dir():
        modules = root / "usr" / "lib" / "modules" / release
    return DebianKernel(release=release, root=root, image=root / "boot" / f"vmlinuz-{release}",
                        modules_dir=modules, headers_dir=root / "usr" / "src" / f"linux-headers-{release}")


def _package_set(release: str) -> list[str]:
    """image, headers, and the exact common/kbuild packages the headers depend on."""
    image, headers = f"linux-image-{release}", f"linux-headers-{release}"
    show = _run(["apt-cache", "show", "--no-all-versions", headers])
    version = re.search(r"^Version: (\S+)", show, re.M)
    depends = re.search(r"^Depends: (.*)$", show, re.M)
    if not version or not depends:
        raise ArtifactError(f"apt-cache show {headers} gave no Version/Depends")
    wanted = [f"{image}={version.group(1)}", f"{headers}={version.group(1)}"]
    for dep in depends.group(1).split(","):
        name = dep.strip().split()[0]
        if name.startswith(("linux-headers-", "linux-kbuild-")):
            wanted.append(f"{name}={version.group(1)}")
    return wanted


def fetch(release: str, cache: Path) -> DebianKernel:
    """Download and unpack one exact release into the cache (once, whoever asks at the same time)."""
    final = cache / "kernels" / "debian" / release
    if is_complete(final):
        return _paths(release, final)
    known = _run(["apt-cache", "pkgnames", f"linux-image-{release}"]).split()
    if f"linux-image-{release}" not in known:
        raise ArtifactError(f"Debian kernel {release} does not exist: apt has no package "
                            f"linux-image-{release}")

    def unpack(root: Path) -> None:
        debs = root / ".debs"
        debs.mkdir()
        # apt drops privileges to _apt when it can; world-writable lets it write here.
        root.chmod(0o755)
        debs.chmod(0o777)
        _run(["apt-get", "download", "-q", *_package_set(release)], cwd=debs)
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(root)])
        shutil.rmtree(debs)
        _relocate_headers(release, root)
        kernel = _paths(release, root)
        for needed in (kernel.image, kernel.modules_dir, kernel.headers_dir / "Makefile"):
            if not needed.exists():
                raise ArtifactError(f"Debian kernel {release}: {needed.relative_to(root)} missing after unpacking")

    publish(final, unpack)
    return _paths(release, final)


def _relocate_headers(release: str, root: Path) -> None:
    """Make /usr/src/... includes and the lib/modules build links relative,
    so the extraction works wherever the cache lies (and after it is renamed)."""
    src = root / "usr" / "src"
    for makefile in src.glob("linux-headers-*/Makefile"):
        text = makefile.read_text()
        # make -C runs in the headers directory, so ../ is usr/src.
        fixed = re.sub(r"(include\s+)/usr/src/", r"\1../", text)
        if fixed != text:
            makefile.write_text(fixed)
    for moddir in (root / "lib" / "modules" / release, root / "usr" / "lib" / "modules" / release):
        for link in ("build", "source"):
            p = moddir / link
            if p.is_symlink() and str(p.readlink()).startswith("/"):
                target = root / str(p.readlink()).lstrip("/")
                p.unlink()
                p.symlink_to(os.path.relpath(target, moddir))
