"""The shared backend: PostgreSQL through psycopg 3 and its asyncio connection pool.

Several hosts share one database: claims take rows with ``FOR UPDATE SKIP
LOCKED``, rate-limit buckets are read ``FOR UPDATE``, and notifications are
PostgreSQL's own ``NOTIFY``, sent when the transaction commits and read by each
host on one listening connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from sandboxd.service.store.base import (
    CANCEL_CHANNEL,
    OUTPUT_CHANNEL,
    WORK_CHANNEL,
    ExecutionStore,
    Notice,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)

# pg_advisory_xact_lock's key for migrations: any constant every sandboxd uses ("sndbxd").
_MIGRATION_LOCK: Final = 0x736E646278_64
_RECONNECT_PAUSE: Final = 1.0


def _reason(error: psycopg.Error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class _PostgresTransaction:
    """Statements of one transaction on one pooled connection; ``?`` becomes psycopg's ``%s``."""

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._connection = connection

    async def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        cursor = await self._connection.execute(sql.replace("?", "%s"), params)
        return await cursor.fetchall()

    async def run(self, sql: str, params: Sequence[object] = ()) -> int:
        cursor = await self._connection.execute(sql.replace("?", "%s"), params)
        return cursor.rowcount

    async def notify(self, channel: str, payload: str) -> None:
        await self._connection.execute("SELECT pg_notify(%s, %s)", (channel, payload))


class PostgresStore(ExecutionStore):
    """The store in a PostgreSQL database that several hosts share."""

    shared = True
    skip_locked = " FOR UPDATE SKIP LOCKED"
    for_update = " FOR UPDATE"

    def __init__(self, url: str, host_id: str, lease: float, pool_size: int, connect_timeout: float) -> None:
        super().__init__(host_id, lease)
        self.url = url
        self._connect_timeout = connect_timeout
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=connect_timeout,
            # A connection the server dropped (a restart) is found out before it is handed out.
            check=AsyncConnectionPool.check_connection,
            kwargs={"connect_timeout": max(1, round(connect_timeout))},
        )

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresTransaction]:
        """One transaction on a pooled connection, committed at the end of the block."""
        try:
            async with self._pool.connection() as connection:
                yield _PostgresTransaction(connection)
        except psycopg.OperationalError as error:
            self.reached(False)
            raise StoreUnavailableError(_reason(error)) from error
        self.reached(True)

    async def open(self, *, migrate: bool = True) -> None:
        """Connect, then (``migrate``) apply missing migrations while holding the migration lock."""
        try:
            await self._pool.open(wait=True, timeout=self._connect_timeout)
        except psycopg.OperationalError as error:
            raise StoreUnavailableError(_reason(error)) from error
        if not migrate:
            return
        async with self.transaction() as tx:
            # Held until this transaction commits: a second host waits, then finds nothing to do.
            await tx.fetch("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            applied = await self.apply_migrations(tx)
        if applied:
            log.info("store: applied migrations %s", ", ".join(map(str, applied)))

    async def close(self) -> None:
        """Close the pool's connections."""
        await self._pool.close()

    async def listen(self, on_notice: Notice) -> None:
        """LISTEN on a connection of its own; reconnect when the server goes away.

        After each (re)connection ``on_notice(WORK_CHANNEL, "")`` is called: work
        queued while nobody listened is looked for at once.
        """
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=max(1, round(self._connect_timeout))
                )
                async with connection:
                    await connection.execute(f"LISTEN {WORK_CHANNEL}")
                    await connection.execute(f"LISTEN {CANCEL_CHANNEL}")
                    await connection.execute(f"LISTEN {OUTPUT_CHANNEL}")
                    on_notice(WORK_CHANNEL, "")
                    async for notice in connection.notifies():
                        on_notice(notice.channel, notice.payload)
            except psycopg.OperationalError as error:
                self.reached(False)
                log.warning("store: listening connection lost (%s); reconnecting", _reason(error))
            await asyncio.sleep(_RECONNECT_PAUSE)
