"""Language packages in an image: how pip and npm are called to install a runtime's pinned packages.

The host's own pip and npm fetch them from their registries; neither runs anything a
package ships (pip installs wheels only, npm with install scripts off), so building an
image never runs a registry's code on the host.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import attrs


class UnsafeImagePathError(Exception):
    """A path packages would be moved to passes through a symlink or exists already."""


@attrs.frozen
class ImagePython:
    """The Python in an image being built: its version and the glibc its wheels must suit."""

    major: int
    minor: int
    glibc: tuple[int, int]

    @classmethod
    def from_probe(cls, output: str) -> ImagePython:
        """Read what PROBE prints: ``3 13 2.41``."""
        major, minor, libc = output.split()
        glibc_major, glibc_minor = libc.split(".")[:2]
        return cls(int(major), int(minor), (int(glibc_major), int(glibc_minor)))

    @property
    def site_packages(self) -> str:
        """Where [build.pip] packages go in the image: Debian's Python looks there for local packages."""
        return f"/usr/local/lib/python{self.major}.{self.minor}/dist-packages"


# What the image's python3 runs to say what ImagePython.from_probe reads.
PYTHON_PROBE = "import platform, sys; print(*sys.version_info[:2], platform.libc_ver()[1])"


def listed(packages: Mapping[str, str]) -> str:
    """``name version, ...`` for a progress line."""
    return ", ".join(f"{name} {version}" for name, version in packages.items())


def pip_install_argv(python: str, rootfs: Path, image: ImagePython, packages: Mapping[str, str]) -> list[str]:
    """The pip command line that installs ``packages`` (name: exact version) for the image's Python.

    Wheels only (``--only-binary``), for that CPython on the image's glibc (every manylinux
    tag up to it), and not compiled (the image's own Python compiles them afterwards).
    """
    glibc_major, glibc_minor = image.glibc
    machine = os.uname().machine
    platforms = [f"manylinux_{glibc_major}_{m}_{machine}" for m in range(glibc_minor, 16, -1)]
    platforms += [f"manylinux2014_{machine}", f"linux_{machine}"]
    version = f"{image.major}{image.minor}"
    argv = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-compile"]
    argv += ["--only-binary=:all:", "--target", str(rootfs / image.site_packages.lstrip("/"))]
    argv += [
        "--python-version",
        f"{image.major}.{image.minor}",
        "--implementation",
        "cp",
        "--abi",
        f"cp{version}",
    ]
    argv += [f"--platform={platform}" for platform in platforms]
    return argv + [f"{name}=={pinned}" for name, pinned in sorted(packages.items())]


def compile_argv(image: ImagePython) -> list[str]:
    """What the image's Python runs to compile the installed packages once, at build time.

    Unchecked hashes: the root is read-only, so a program never finds a stale cache, and
    importing skips comparing each source's time.
    """
    argv = ["python3", "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash"]
    return [*argv, image.site_packages]


def npm_install_argv(npm: str, prefix: Path, packages: Mapping[str, str]) -> list[str]:
    """The npm command line that installs ``packages`` (name: exact version) under ``prefix``, scripts off."""
    argv = [npm, "install", "--prefix", str(prefix), "--ignore-scripts", "--no-save", "--no-package-lock"]
    argv += ["--no-audit", "--no-fund", "--no-update-notifier", "--omit=dev", "--loglevel=warn"]
    return argv + [f"{name}@{pinned}" for name, pinned in sorted(packages.items())]


def move_into_rootfs(source: Path, rootfs: Path, destination: Path) -> None:
    """Move ``source`` to ``destination`` inside ``rootfs``, refusing a symlink on the way there."""
    for parent in reversed(destination.relative_to(rootfs).parents):
        if (rootfs / parent).is_symlink():
            raise UnsafeImagePathError(
                f"{rootfs / parent} is a symlink in the image; not installing through it"
            )
    if destination.is_symlink() or destination.exists():
        raise UnsafeImagePathError(f"{destination} exists in the image already")
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, destination)
