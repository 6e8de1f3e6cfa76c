"""Reconciliation: removing every sandbox an earlier run of this daemon left behind."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Final

from sandboxd.engine.agent import AgentChannel
from sandboxd.engine.orphans import listed_by, reap_orphaned_shims
from sandboxd.engine.roots import ROOT_LABEL, remove_stale_roots
from sandboxd.engine.sandbox import HOST_LABEL, Sandbox, SandboxHost
from sandboxd.engine.workspace import Workspace

log = logging.getLogger(__name__)

_RECONCILE_PARALLEL: Final = 4


async def reconcile(host: SandboxHost, keep: Collection[str] = (), *, left_by: str = "a previous run") -> int:
    """Remove every sandbox of this daemon's but those in ``keep``; return how many.

    Run at start-up, before any execution (what a previous run left), after a containerd
    outage, and at close: a task in any state (CREATED ones included) is torn down like a
    sandbox whose execution ended, and workspaces, FIFO directories and shared roots nobody
    owns any more are removed. ``left_by`` says in the log where the ones found came from.
    """
    client = host.client
    mine = [f'labels."{HOST_LABEL}"=={host.host_id}']
    found = {container.id for container in await client.containers.list(mine)}
    # The images' shared roots are no sandbox's: removed on their own, after the sandboxes.
    found |= {s.name for s in await client.snapshots.list(mine) if ROOT_LABEL not in s.labels}
    found |= {lease.id for lease in await client.leases.list(mine) if ROOT_LABEL not in lease.labels}
    found -= set(keep)
    limit = asyncio.Semaphore(_RECONCILE_PARALLEL)

    async def remove(sandbox_id: str) -> None:
        async with limit:
            await Sandbox.adopt(host, sandbox_id).destroy()

    await asyncio.gather(*(remove(sandbox_id) for sandbox_id in sorted(found)))
    roots = await remove_stale_roots(client, host.roots, host.host_id, keep)
    for directory in await asyncio.to_thread(_entries, host.workspaces):
        if directory.name not in keep:
            await Workspace(directory).remove()
    for directory in await asyncio.to_thread(_entries, host.fifos):
        if directory.name not in keep:
            await asyncio.to_thread(AgentChannel.remove_fifos, directory)
    await asyncio.to_thread(reap_orphaned_shims, client.namespace, await listed_by(client))
    if found:
        log.warning("removed %d sandboxes left by %s", len(found), left_by)
    if roots:
        log.info("removed %d shared image roots left by %s", roots, left_by)
    return len(found)


def _entries(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
