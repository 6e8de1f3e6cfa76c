"""Per-execution workspaces: a size-limited tmpfs on the host, mounted at /workspace in the sandbox.

The daemon writes the source file (and the request's files) before any process of the execution runs
(a pooled sandbox has run nothing but its agent). Afterwards it never reads or
walks the directory, which the sandbox may have filled with
symlinks: removal is an unmount (the tmpfs and everything in it vanish) and an
rmdir of the now-empty mount point.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from sandboxd.engine.oci import NOBODY

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_MS_NOSUID: Final = 0x2
_MS_NODEV: Final = 0x4
_MNT_DETACH: Final = 0x2
_UMOUNT_NOFOLLOW: Final = 0x8


def _mount_tmpfs(target: Path, size_bytes: int) -> None:
    options = f"size={size_bytes},mode=0755,uid={NOBODY},gid={NOBODY}".encode()
    if _libc.mount(b"tmpfs", bytes(target), b"tmpfs", _MS_NOSUID | _MS_NODEV, options) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mounting tmpfs on {target}: {os.strerror(code)}")


def _unmount(target: Path) -> None:
    if _libc.umount2(bytes(target), _MNT_DETACH | _UMOUNT_NOFOLLOW) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not mounted (already gone)
            raise OSError(code, f"unmounting {target}: {os.strerror(code)}")


class Workspace:
    """One execution's /workspace: a tmpfs mount owned by the sandbox user."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    async def create(cls, root: Path, name: str, size_bytes: int) -> Workspace:
        """Mount a fresh tmpfs of ``size_bytes`` at ``root/name``."""
        path = root / name
        await asyncio.to_thread(cls._create, path, size_bytes)
        return cls(path)

    @staticmethod
    def _create(path: Path, size_bytes: int) -> None:
        path.mkdir(mode=0o700)
        try:
            _mount_tmpfs(path, size_bytes)
        except OSError:
            path.rmdir()
            raise

    async def write_files(self, files: Mapping[str, bytes]) -> None:
        """Create each relative path of ``files`` (directories as needed), owned by the sandbox user."""
        await asyncio.to_thread(self._write_files, files)

    def _write_files(self, files: Mapping[str, bytes]) -> None:
        for name, content in files.items():
            parts = name.split("/")
            if any(part in ("", ".", "..") for part in parts):
                raise ValueError(f"not a relative path: {name!r}")
            # Nothing of the execution ran yet, so no link can be here; O_NOFOLLOW all the same.
            directory = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                for part in parts[:-1]:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=directory)
                        os.chown(part, NOBODY, NOBODY, dir_fd=directory, follow_symlinks=False)
                    inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
                    os.close(directory)
                    directory = inner
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                fd = os.open(parts[-1], flags, 0o644, dir_fd=directory)
                try:
                    view = memoryview(content)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fchown(fd, NOBODY, NOBODY)
                finally:
                    os.close(fd)
            finally:
                os.close(directory)

    async def remove(self) -> None:
        """Unmount the tmpfs (discarding all it holds) and remove the mount point."""
        await asyncio.to_thread(self._remove, self.path)

    @staticmethod
    def _remove(path: Path) -> None:
        _unmount(path)
        with contextlib.suppress(FileNotFoundError):
            path.rmdir()
