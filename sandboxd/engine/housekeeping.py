"""Deferring housekeeping (booting spare sandboxes, removing used ones) while programs run.

Both compete with running programs for the CPU; a request's latency is that of
its program plus whatever else the host does meanwhile. Housekeeping waits for
a moment when no program runs, but never longer than its deadline, so that it
still happens under constant load.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class Housekeeping:
    """Knows whether programs run now; lets background work wait for a quiet moment."""

    def __init__(self) -> None:
        self._running = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @contextlib.contextmanager
    def program_running(self) -> Iterator[None]:
        """Mark a program as running for the duration of the block."""
        self._running += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._running -= 1
            if not self._running:
                self._quiet.set()

    async def quiet(self, deadline: float) -> None:
        """Return when no program runs, or after ``deadline`` seconds, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._quiet.wait(), deadline)
