"""One host among several: its name in the shared store, and its registration there."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from sandboxd.config import Config
from sandboxd.engine.sandbox import host_id_for
from sandboxd.service.store import ExecutionStore, HostRecord, StoreUnavailableError

log = logging.getLogger(__name__)


def host_id(config: Config) -> str:
    """The daemon's name in claims and in the hosts table: the configured one, or host name and state dir.

    Stable across restarts (a restarted host settles what it held), distinct for two
    daemons on one machine (each has a state directory of its own).
    """
    return config.store.host_id or f"{socket.gethostname()}-{host_id_for(config.paths.state)[:8]}"


class Heartbeat:
    """Registers this host in the store and renews the registration every third of a lease."""

    def __init__(
        self, store: ExecutionStore, address: str, capacity: int, runtimes: Callable[[], list[str]]
    ) -> None:
        self._store = store
        self._address = address
        self._capacity = capacity
        self._runtimes = runtimes
        self._started = time.time()

    async def beat(self) -> None:
        """Write this host's row now."""
        await self._store.heartbeat(
            HostRecord(
                host_id=self._store.host_id,
                address=self._address,
                capacity=self._capacity,
                runtimes=tuple(sorted(self._runtimes())),
                started_at=self._started,
                heartbeat_at=time.time(),
            )
        )

    async def beat_forever(self) -> None:
        """Beat every third of a lease; a store away for a while is waited for, not a failure."""
        while True:
            try:
                await self.beat()
            except StoreUnavailableError as error:
                log.debug("heartbeat: %s", error)
            await asyncio.sleep(self._store.lease / 3)
