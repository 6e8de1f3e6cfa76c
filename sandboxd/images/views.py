"""Short-lived read-only views of an image's unpacked layers, for measuring them or building on them.

Each view has a lease of its own that expires: a builder killed meanwhile leaves nothing
that containerd's garbage collector would not remove.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from sandboxd.containerd import ContainerdClient, Mount, NotFoundError

_VIEW_LEASE: Final = dt.timedelta(hours=2)


class ViewMountError(Exception):
    """Mounting or unmounting a view failed; the message carries mount's own."""


@contextlib.asynccontextmanager
async def image_view(client: ContainerdClient, chain_id: str, purpose: str) -> AsyncIterator[list[Mount]]:
    """A read-only view of the snapshot ``chain_id`` (an image's layers): its mounts, while it lasts."""
    key = f"sandboxd-{purpose}-{secrets.token_hex(6)}"
    await client.leases.create(key, expires_in=_VIEW_LEASE, labels={})
    try:
        yield await client.snapshots.view(key, chain_id, lease=key)
    finally:
        with contextlib.suppress(NotFoundError):
            await client.snapshots.remove(key)
        with contextlib.suppress(NotFoundError):
            await client.leases.delete(key)


def mount_argv(mount: Mount, target: Path) -> list[str]:
    """mount(8)'s command line for a view's mount at ``target``, read-only whatever it says."""
    options = ",".join(["ro", *(option for option in mount.options if option != "rw")])
    kind = ["-t", mount.type] if mount.type not in ("bind", "rbind", "none") else []
    return ["mount", *kind, "-o", options, mount.source, str(target)]


async def _run(argv: list[str]) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise ViewMountError(f"{' '.join(argv)}: {output.decode(errors='replace').strip()}")


@contextlib.asynccontextmanager
async def mounted_image(client: ContainerdClient, chain_id: str, target: Path) -> AsyncIterator[Path]:
    """The image's root filesystem mounted read-only at ``target`` while the context lasts."""
    async with image_view(client, chain_id, "build") as mounts:
        if len(mounts) != 1:
            raise ViewMountError(f"a view of {chain_id} has {len(mounts)} mounts, not one")
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
        await _run(mount_argv(mounts[0], target))
        try:
            yield target
        finally:
            await _run(["umount", str(target)])
