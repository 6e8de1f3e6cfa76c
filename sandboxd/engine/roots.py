"""One read-only root per image, shared by all of its sandboxes.

A sandbox's root is read-only, so no sandbox needs a writable snapshot of its own:
each image's layers are viewed once (a containerd view snapshot under a lease of
its own), mounted read-only on the host once, and every sandbox of that image
names the mount as its root. A boot then costs no snapshot, lease or mount of
its own. The roots live as long as the engine; reconciliation removes those an
earlier run left.

runsc's gofer makes the mount point of each bind mount in the root before it
mounts it there, which a read-only root refuses: the mount points are a layer of
their own, the top one of the root's read-only overlay.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import secrets
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Final

from sandboxd.containerd import ContainerdClient, ContainerdError, Mount, NotFoundError
from sandboxd.engine.oci import AGENT_DIR, WORKSPACE
from sandboxd.engine.sandbox import HOST_LABEL

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_MS_RDONLY: Final = 0x1
_MS_NOSUID: Final = 0x2
_MS_NODEV: Final = 0x4
_MNT_DETACH: Final = 0x2
ROOT_PREFIX: Final = "root-"
# On a root's view and lease: an engine's own, never an execution's.
ROOT_LABEL: Final = "sandboxd.io/root"
# Where the sandbox spec bind-mounts directories of the host (sandboxd/engine/oci.py).
_MOUNT_POINTS: Final = (WORKSPACE, AGENT_DIR)
_POINTS_SUFFIX: Final = ".mount-points"


def _layers(mount: Mount) -> list[str]:
    """The directories of the image's layers, top first, from the mount of its view."""
    if mount.type == "bind":
        return [mount.source]
    for option in mount.options:
        if option.startswith("lowerdir="):
            return option.removeprefix("lowerdir=").split(":")
    raise RootError(errno.EINVAL, f"an image view mounted as {mount.type} without lowerdir")


def _mount_root(mount: Mount, target: Path) -> None:
    """Mount the image's layers, under its mount points, read-only at ``target``; file system work."""
    points = target.with_name(target.name + _POINTS_SUFFIX)
    for point in _MOUNT_POINTS:
        (points / point.lstrip("/")).mkdir(mode=0o755, parents=True, exist_ok=True)
    target.mkdir(mode=0o755, exist_ok=True)
    # Only lower layers, no upper one: the overlay is read-only whatever the mount flags.
    options = f"lowerdir={':'.join([str(points), *_layers(mount)])}".encode()
    flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV
    if _libc.mount(b"overlay", bytes(target), b"overlay", flags, options) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mounting the root {target}: {os.strerror(code)}")


def _only(mounts: list[Mount]) -> Mount:
    if len(mounts) != 1:
        raise RootError(errno.EINVAL, f"an image view of {len(mounts)} mounts, not one")
    return mounts[0]


def unmount_root(target: Path) -> None:
    """Unmount a root (if mounted) and remove its mount point; file system work, off the loop."""
    if _libc.umount2(bytes(target), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):
            raise OSError(code, f"unmounting the root {target}: {os.strerror(code)}")
    with contextlib.suppress(FileNotFoundError):
        target.rmdir()
    points = target.with_name(target.name + _POINTS_SUFFIX)
    for point in _MOUNT_POINTS:
        parts = Path(point.lstrip("/")).parts
        for depth in range(len(parts), 0, -1):
            with contextlib.suppress(FileNotFoundError):
                (points / Path(*parts[:depth])).rmdir()
    with contextlib.suppress(FileNotFoundError):
        points.rmdir()


def _mounted_roots(directory: Path) -> set[str]:
    try:
        return {entry.name.removesuffix(_POINTS_SUFFIX) for entry in directory.iterdir()}
    except FileNotFoundError:
        return set()


async def remove_root(client: ContainerdClient, directory: Path, key: str) -> None:
    """Unmount a root and remove its view and lease; what fails is logged, and found again later."""
    await asyncio.to_thread(unmount_root, directory / key)
    for remove in (client.snapshots.remove, client.leases.delete):
        try:
            await remove(key)
        except NotFoundError:
            pass
        except ContainerdError:
            log.exception("removing the shared root %s failed; reconciliation retries", key)


async def remove_stale_roots(
    client: ContainerdClient, directory: Path, host_id: str, keep: Collection[str]
) -> int:
    """Remove every root of this host (its roots are mounted in ``directory``) but those ``keep`` names."""
    labelled = await client.leases.list([f'labels."{HOST_LABEL}"=={host_id},labels."{ROOT_LABEL}"'])
    host_roots = {lease.id for lease in labelled}
    stale = (host_roots | await asyncio.to_thread(_mounted_roots, directory)) - set(keep)
    for key in sorted(stale):
        await remove_root(client, directory, key)
    return len(stale)


class RootError(OSError):
    """An image's view is not one mount, as sandboxd makes images."""


class SharedRoots:
    """The mounted roots of the images this engine's sandboxes run, made on first use."""

    def __init__(self, client: ContainerdClient, directory: Path, labels: Mapping[str, str]) -> None:
        self._client = client
        self._directory = directory
        self._labels = {**labels, ROOT_LABEL: "true"}
        self._roots: dict[str, Path] = {}
        # Each engine's own (a command's engine beside the daemon's must not share them).
        self._suffix = secrets.token_hex(4)
        self._lock = asyncio.Lock()

    def key_for(self, chain_id: str) -> str:
        """The name of the view snapshot, its lease and its mount point for an image's chain ID."""
        return f"{ROOT_PREFIX}{chain_id.removeprefix('sha256:')[:16]}-{self._suffix}"

    def keys(self) -> set[str]:
        """The roots that exist now (which reconciliation after an outage must leave alone)."""
        return {self.key_for(chain_id) for chain_id in self._roots}

    async def path_for(self, chain_id: str) -> Path:
        """The host directory holding the image's root filesystem, read-only; made if missing."""
        found = self._roots.get(chain_id)
        if found is not None:
            return found
        async with self._lock:
            found = self._roots.get(chain_id)
            if found is None:
                found = self._roots[chain_id] = await self._make(chain_id)
            return found

    async def _make(self, chain_id: str) -> Path:
        key = self.key_for(chain_id)
        target = self._directory / key
        # A lease without expiry: the root lives as long as the engine, which removes it.
        await self._client.leases.create(key, expires_in=None, labels=self._labels)
        try:
            mount = _only(await self._client.snapshots.view(key, chain_id, lease=key, labels=self._labels))
            await asyncio.to_thread(_mount_root, mount, target)
        except BaseException:
            await self._remove(key)
            raise
        return target

    async def _remove(self, key: str) -> None:
        await remove_root(self._client, self._directory, key)

    async def close(self) -> None:
        """Unmount and remove every root (once no sandbox uses them)."""
        roots, self._roots = self._roots, {}
        for chain_id in roots:
            await self._remove(self.key_for(chain_id))
