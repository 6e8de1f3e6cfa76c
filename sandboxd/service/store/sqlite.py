"""The embedded backend: SQLite in the data directory, used from one dedicated thread.

One host only: its transactions take turns (an asyncio lock, one connection), the
queue's claims need no row locks, and notifications are delivered in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sandboxd.service.store.base import ExecutionStore, Notice

_T = TypeVar("_T")


class _SqliteTransaction:
    """Statements of one transaction, each run on the store's thread."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.notices: list[tuple[str, str]] = []

    async def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return await self._store.on_thread(lambda db: db.execute(sql, params).fetchall())

    async def run(self, sql: str, params: Sequence[object] = ()) -> int:
        return await self._store.on_thread(lambda db: db.execute(sql, params).rowcount)

    async def notify(self, channel: str, payload: str) -> None:
        self.notices.append((channel, payload))


class SqliteStore(ExecutionStore):
    """The SQLite database of executions; every call runs on the store's own thread."""

    def __init__(self, path: Path, host_id: str, lease: float) -> None:
        super().__init__(host_id, lease)
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandboxd-store")
        self._db: sqlite3.Connection | None = None
        self._turn = asyncio.Lock()
        self._listeners: set[Notice] = set()

    async def on_thread(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` with the connection on the store's thread."""

        def run() -> _T:
            if self._db is None:
                raise RuntimeError("the execution store is not open")
            return work(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTransaction]:
        """One transaction at a time, holding the database's write lock from its start.

        Taken at once (``BEGIN IMMEDIATE``), the lock is waited for; a transaction that
        read first and wrote then could find another process's writer in the way.
        """
        async with self._turn:
            await self.on_thread(lambda db: db.execute("BEGIN IMMEDIATE"))
            tx = _SqliteTransaction(self)
            try:
                yield tx
            except BaseException:
                await asyncio.shield(self.on_thread(lambda db: db.execute("ROLLBACK")))
                raise
            await asyncio.shield(self.on_thread(lambda db: db.execute("COMMIT")))
        for channel, payload in tx.notices:
            for listener in list(self._listeners):
                listener(channel, payload)

    async def open(self, *, migrate: bool = True) -> None:
        """Open (creating if needed) the database, and (``migrate``) bring its schema up to date."""

        def connect(_: None = None) -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are the explicit BEGIN ... COMMIT of transaction().
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            # WAL with synchronous=NORMAL: a committed row survives the daemon being killed.
            _switch_to_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._thread, connect)
        if migrate:
            async with self.transaction() as tx:
                await self.apply_migrations(tx)

    async def close(self) -> None:
        """Close the database and its thread."""

        def disconnect() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, disconnect)
        self._thread.shutdown(wait=True)

    async def listen(self, on_notice: Notice) -> None:
        """Deliver this process's own notifications (one host: nobody else writes)."""
        self._listeners.add(on_notice)
        try:
            await asyncio.Event().wait()
        finally:
            self._listeners.discard(on_notice)


def _switch_to_wal(db: sqlite3.Connection, *, patience: float = 30.0) -> None:
    """Put the database in WAL mode, waiting while another connection holds it locked.

    Switching needs an exclusive lock. Two connections switching a new database at once can
    each hold the shared lock the other waits behind; SQLite then fails one at once with
    "database is locked" instead of calling its busy handler, so the wait is here.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            return
