"""Bounded concurrency with a bounded queue: past both, callers are turned away at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class QueueFullError(Exception):
    """Every slot is busy and the queue is full."""


class Admission:
    """At most ``slots`` holders at once; at most ``queue`` callers waiting for a slot."""

    def __init__(self, slots: int, queue: int) -> None:
        self.slots = slots
        self.queue = queue
        self._semaphore = asyncio.Semaphore(slots)
        self.waiting = 0
        self.background_waiting = 0
        self.running = 0

    @contextlib.asynccontextmanager
    async def slot(self, *, wait: bool = False) -> AsyncIterator[None]:
        """Hold one slot for the block; raise ``QueueFullError`` when the queue is full, unless ``wait``.

        Background work passes ``wait=True``: it is bounded where it is accepted, not here.
        """
        if not wait and self._semaphore.locked() and self.waiting >= self.queue:
            raise QueueFullError(f"{self.running} executions running and {self.waiting} queued")
        if wait:
            self.background_waiting += 1
        else:
            self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            if wait:
                self.background_waiting -= 1
            else:
                self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._semaphore.release()
