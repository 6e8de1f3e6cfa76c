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


class Cleanups:
    """The removals one engine has under way, so that shutdown can wait for every one of them."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Future[None]] = set()

    @property
    def pending(self) -> int:
        """How many removals are under way."""
        return len(self._pending)

    async def complete_even_if_cancelled(self, cleanup: Awaitable[None]) -> None:
        """Await ``cleanup``; if the caller is cancelled meanwhile, the cleanup still runs to its end."""
        task = asyncio.ensure_future(cleanup)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        await asyncio.shield(task)

    def destroy_in_background(
        self,
        sandbox: Sandbox,
        on_removed: Callable[[float], None] | None = None,
        wait_first: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Remove ``sandbox`` without waiting for it; ``drain`` waits for every such removal.

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
        self._pending.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("removing a sandbox failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for every removal still under way (at shutdown)."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
