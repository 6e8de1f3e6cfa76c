"""Image layers as differences: what a runtime's root filesystem adds to, changes in or removes from the base.

Every runtime image is the shared Debian base layer plus one layer of its own.
Both root filesystems are built by the daemon itself (mmdebstrap on the host), so
walking them is safe; no symlink is ever followed, and nothing here runs inside a
sandbox's file system.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

import attrs

# The OCI whiteout prefix: a file ``.wh.NAME`` in a layer deletes NAME of the layers below.
WHITEOUT_PREFIX: Final = ".wh."
_CHUNK: Final = 1 << 20


@attrs.frozen
class LayerDiff:
    """Paths (relative, parents first) that a layer must carry, and the paths it deletes."""

    changed: tuple[str, ...]
    removed: tuple[str, ...]


def _same_content(first: Path, second: Path) -> bool:
    with first.open("rb") as one, second.open("rb") as other:
        while True:
            block = one.read(_CHUNK)
            if block != other.read(_CHUNK):
                return False
            if not block:
                return True


def _same_entry(base: Path, full: Path, base_stat: os.stat_result, full_stat: os.stat_result) -> bool:
    """Whether ``full`` is the same file as ``base`` (type, owner, mode, content; not times)."""
    if (base_stat.st_mode, base_stat.st_uid, base_stat.st_gid) != (
        full_stat.st_mode, full_stat.st_uid, full_stat.st_gid,
    ):  # fmt: skip
        return False
    kind = stat.S_IFMT(full_stat.st_mode)
    if kind == stat.S_IFLNK:
        return os.readlink(base) == os.readlink(full)
    if kind == stat.S_IFREG:
        return base_stat.st_size == full_stat.st_size and _same_content(base, full)
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        return base_stat.st_rdev == full_stat.st_rdev
    return True  # directories, FIFOs, sockets: their metadata is all there is


def diff_trees(base: Path, full: Path) -> LayerDiff:
    """What ``full`` differs from ``base`` by; a layer with exactly that, on ``base``, gives ``full``."""
    changed: list[str] = []
    removed: list[str] = []
    for directory, subdirectories, files in os.walk(full):
        relative_dir = Path(directory).relative_to(full)
        for name in sorted([*subdirectories, *files]):
            relative = relative_dir / name
            full_stat = os.lstat(full / relative)
            try:
                base_stat = os.lstat(base / relative)
            except FileNotFoundError:
                changed.append(str(relative))
                continue
            if not _same_entry(base / relative, full / relative, base_stat, full_stat):
                changed.append(str(relative))
        subdirectories.sort()
    for directory, subdirectories, files in os.walk(base):
        relative_dir = Path(directory).relative_to(base)
        for name in sorted([*subdirectories, *files]):
            relative = relative_dir / name
            if not os.path.lexists(full / relative):
                removed.append(str(relative))
        # A removed directory's whiteout covers what it held.
        subdirectories[:] = sorted(d for d in subdirectories if os.path.lexists(full / relative_dir / d))
    return LayerDiff(changed=tuple(sorted(changed)), removed=tuple(sorted(removed)))


def add_whiteouts(full: Path, removed: tuple[str, ...]) -> list[str]:
    """Create an empty whiteout file in ``full`` for each removed path; return their relative paths."""
    made = []
    for relative in removed:
        parent, name = os.path.split(relative)
        whiteout = os.path.join(parent, WHITEOUT_PREFIX + name)
        fd = os.open(full / whiteout, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o000)
        os.close(fd)
        made.append(whiteout)
    return made
