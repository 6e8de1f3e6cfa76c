"""Whether containerd answers: a ping every second, and failures the engine sees on the way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Final

from sandboxd.containerd import ContainerdClient, ContainerdError, UnavailableError

log = logging.getLogger(__name__)

PING_INTERVAL: Final = 1.0
PING_TIMEOUT: Final = 1.0
# A containerd that cannot be reached is unavailable at once; one that is there but slow (a
# host thrashing under a memory bomb) only once this many pings in a row had no answer in time.
SLOW_PINGS: Final = 3


class ContainerdUnavailableError(Exception):
    """containerd does not answer; nothing can run until it is back."""


class ContainerdWatch:
    """Tracks containerd's availability; runs ``on_recovery`` each time it comes back."""

    def __init__(self, client: ContainerdClient, on_recovery: Callable[[], Awaitable[None]]) -> None:
        self.client = client
        self.on_recovery = on_recovery
        self.available = True
        self.reason: str | None = None
        self._back = asyncio.Event()
        self._back.set()

    def require(self) -> None:
        """Raise ``ContainerdUnavailableError`` unless containerd answered at the last look."""
        if not self.available:
            raise ContainerdUnavailableError(f"containerd is unavailable ({self.reason}); retry later")

    def report(self, error: ContainerdError) -> None:
        """Mark containerd unavailable now, on an error seen by a caller (before the next ping)."""
        if self.available:
            log.error("containerd became unavailable: %s", error.detail)
        self.available = False
        self.reason = error.detail
        self._back.clear()

    @contextlib.contextmanager
    def translating(self) -> Iterator[None]:
        """Turn containerd's ``UnavailableError`` in the block into ``ContainerdUnavailableError``.

        The one place where the client's error becomes the engine's: containerd is marked
        unavailable at once (before the next ping notices), and callers see a retryable 503.
        """
        try:
            yield
        except UnavailableError as error:
            self.report(error)
            detail = f"containerd is unavailable ({error.detail}); retry later"
            raise ContainerdUnavailableError(detail) from error

    async def wait_available(self) -> None:
        """Return once containerd answers again."""
        await self._back.wait()

    async def run_forever(self) -> None:
        """Ping containerd every second; on the way back, reconcile before reporting it available.

        A ping that fails because containerd cannot be reached marks it unavailable at once; one
        that gets no answer in time, only the ``SLOW_PINGS``th in a row.

        A recovery step that fails for a reason other than containerd (a workspace that cannot be
        unmounted, an image that cannot be read) raises: the supervisor logs it and restarts the watch,
        which tries the recovery again.
        """
        slow = 0
        while True:
            try:
                await self.client.version(timeout=PING_TIMEOUT)
            except UnavailableError as error:
                self.report(error)
            except ContainerdError as error:
                slow += 1
                if slow >= SLOW_PINGS or not self.available:
                    self.report(error)
                else:
                    log.warning("containerd is slow to answer (%d pings in a row): %s", slow, error.detail)
            else:
                slow = 0
                if not self.available:
                    log.info("containerd is back; reconciling what the outage left behind")
                    try:
                        await self.on_recovery()
                    except ContainerdError as error:
                        log.warning("reconciliation after the outage failed: %s", error.detail)
                        continue
                    self.available = True
                    self.reason = None
                    self._back.set()
            await asyncio.sleep(PING_INTERVAL)
