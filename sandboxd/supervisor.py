"""Supervised background tasks: an unexpected exception is logged and the task restarted with backoff.

Every loop the daemon runs in the background (the containerd watch, the pool,
the shim reaper, the retention purge, health publication, asynchronous
executions) is started here, never with a bare ``asyncio.create_task``: a task
that dies silently leaves a daemon that looks alive and serves nothing. While a
task waits to be restarted it is *down*, with the reason, which the health
service reports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import attrs

log = logging.getLogger(__name__)

FIRST_BACKOFF: Final = 0.5
MAX_BACKOFF: Final = 30.0
# A task that ran this long before it failed starts again from the first backoff.
_HEALTHY_RUN: Final = 60.0


@attrs.frozen
class Backoff:
    """How long to wait before restarting a failed task: doubling from ``first`` up to ``most``."""

    first: float = FIRST_BACKOFF
    most: float = MAX_BACKOFF

    def after(self, previous: float | None) -> float:
        """The wait after one that lasted ``previous`` (None: the first failure)."""
        return self.first if previous is None else min(previous * 2, self.most)


class Supervised:
    """One supervised task; cancelling it stops it for good (a pending restart included)."""

    def __init__(self, name: str, task: asyncio.Task[None]) -> None:
        self.name = name
        self._task = task

    @property
    def done(self) -> bool:
        """True once the task finished for good (returned, when it may, or was cancelled)."""
        return self._task.done()

    def cancel(self) -> None:
        """Ask the task to stop; ``wait`` for it to have stopped."""
        self._task.cancel()

    async def wait(self) -> None:
        """Wait until the task finished for good; its cancellation is not raised here."""
        await asyncio.gather(self._task, return_exceptions=True)

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended."""
        self.cancel()
        await self.wait()


class Supervisor:
    """Starts background tasks, restarts the ones that fail, and says which are down and why."""

    def __init__(self, backoff: Backoff = Backoff(), clock: Callable[[], float] = time.monotonic) -> None:
        self._backoff = backoff
        self._clock = clock
        self._down: dict[str, str] = {}
        self._restarts: dict[str, int] = {}
        self._running: set[Supervised] = set()

    @property
    def down(self) -> Mapping[str, str]:
        """The tasks waiting to be restarted, each with the reason it failed."""
        return dict(self._down)

    def restarts(self, name: str) -> int:
        """How often the task ``name`` was restarted."""
        return self._restarts.get(name, 0)

    def start(
        self,
        name: str,
        work: Callable[[], Awaitable[None]],
        *,
        forever: bool = True,
        on_done: Callable[[], None] | None = None,
    ) -> Supervised:
        """Run ``work()`` in the background under ``name``; restart it whenever it raises.

        A loop (``forever``) that returns is restarted too: it is meant to run until
        cancelled. Other work (``forever=False``) is done once it returns; ``on_done``
        is called when the task has finished for good.
        """
        task = asyncio.create_task(self._supervise(name, work, forever), name=name)
        handle = Supervised(name, task)
        self._running.add(handle)

        def finished(_: asyncio.Task[None]) -> None:
            self._running.discard(handle)
            if on_done is not None:
                on_done()

        task.add_done_callback(finished)
        return handle

    async def stop(self) -> None:
        """Cancel every task still running and wait for them (at shutdown)."""
        await asyncio.gather(*(handle.stop() for handle in list(self._running)))

    async def _supervise(self, name: str, work: Callable[[], Awaitable[None]], forever: bool) -> None:
        wait: float | None = None
        while True:
            started = self._clock()
            try:
                await work()
            except Exception as error:
                reason = f"{type(error).__name__}: {error}"
                log.exception("background task %r failed; it is restarted", name)
            else:
                if not forever:
                    return
                reason = "it returned, but it should run until stopped"
                log.error("background task %r ended by itself; it is restarted", name)
            if self._clock() - started >= _HEALTHY_RUN:
                wait = None
            wait = self._backoff.after(wait)
            self._down[name] = reason
            self._restarts[name] = self._restarts.get(name, 0) + 1
            try:
                await asyncio.sleep(wait)
            finally:
                self._down.pop(name, None)
            log.info("background task %r restarts (after %.1f s)", name, wait)
