"""Removals that outlive their caller: a sandbox's teardown finishes even when the execution is cancelled."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandboxd.engine.sandbox import Sandbox

log = logging.getLogger(__name__)

_pending_cleanups: set[asyncio.Future[None]] = set()


async def complete_even_if_cancelled(cleanup: Awaitable[None]) -> None:
    """Await ``cleanup``; if the caller is cancelled meanwhile, the cleanup still runs to its end."""
    task = asyncio.ensure_future(cleanup)
    _pending_cleanups.add(task)
    task.add_done_callback(_pending_cleanups.discard)
    await asyncio.shield(task)


def destroy_in_background(
    sandbox: Sandbox,
    on_removed: Callable[[float], None] | None = None,
    wait_first: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Remove ``sandbox`` without waiting for it; ``drain_cleanups`` waits for every such removal.

    ``wait_first`` may defer the removal (to a quiet moment); the sandbox is killed at once
    all the same, so nothing it runs outlives its execution.
    """

    async def destroy() -> None:
        if wait_first is not None:
            await sandbox.end_processes()
            await wait_first()
        started = time.monotonic()
        await sandbox.destroy()
        if on_removed is not None:
            on_removed(time.monotonic() - started)

    task = asyncio.ensure_future(destroy())
    _pending_cleanups.add(task)
    task.add_done_callback(_finished_cleanup)


def _finished_cleanup(task: asyncio.Future[None]) -> None:
    _pending_cleanups.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("removing a sandbox failed", exc_info=task.exception())


async def drain_cleanups() -> None:
    """Wait for every cleanup still running (at shutdown)."""
    while _pending_cleanups:
        await asyncio.gather(*_pending_cleanups, return_exceptions=True)
