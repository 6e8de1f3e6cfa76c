"""Durable execution records in SQLite, used from one dedicated thread so the event loop never blocks.

Every execution (synchronous, batch item or asynchronous) gets a row. An
asynchronous one keeps its request until it has finished, so that a restarted
daemon can run it again under the same id; a finished row keeps only the result,
and is purged after the retention period.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

from sandboxd.models import ExecutionRequest, ExecutionResult, ExecutionStatus, Kind
from sandboxd.validation import converter

_T = TypeVar("_T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS executions (
    execution_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    language TEXT NOT NULL,
    session_id TEXT,
    status TEXT NOT NULL,
    request TEXT,
    result TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS executions_by_session ON executions (owner, session_id, created_at);
CREATE INDEX IF NOT EXISTS executions_unfinished ON executions (status) WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS executions_by_age ON executions (finished_at);
"""
# Queries interpolate only this constant; every value is a bound parameter.
_COLUMNS: Final = "execution_id, owner, kind, language, session_id, status, request, result, created_at"


@attrs.frozen
class StoredExecution:
    """One execution as recorded: who asked, what, and (once finished) the result."""

    execution_id: str
    owner: str
    kind: Kind
    language: str
    session_id: str | None
    status: ExecutionStatus
    request: ExecutionRequest | None
    result: ExecutionResult | None
    created_at: float


def _row(row: tuple[Any, ...]) -> StoredExecution:
    execution_id, owner, kind, language, session_id, status, request, result, created_at = row
    return StoredExecution(
        execution_id=execution_id,
        owner=owner,
        kind=Kind(kind),
        language=language,
        session_id=session_id,
        status=ExecutionStatus(status),
        request=converter.structure(json.loads(request), ExecutionRequest) if request else None,
        result=converter.structure(json.loads(result), ExecutionResult) if result else None,
        created_at=created_at,
    )


class ExecutionStore:
    """The SQLite database of executions; every call runs on the store's own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandboxd-store")
        self._db: sqlite3.Connection | None = None

    async def _call(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        def run() -> _T:
            if self._db is None:
                raise RuntimeError("the execution store is not open")
            with self._db:  # one transaction per call
                return work(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    async def open(self) -> None:
        """Open (creating if needed) the database."""

        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)
            # WAL with synchronous=NORMAL: a committed row survives the daemon being killed.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.isolation_level = "DEFERRED"
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._thread, connect)

    async def close(self) -> None:
        """Close the database and its thread."""

        def disconnect() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, disconnect)
        self._thread.shutdown(wait=True)

    async def insert(  # noqa: PLR0917 -- the columns of a new row
        self,
        execution_id: str,
        owner: str,
        kind: Kind,
        request: ExecutionRequest,
        language: str,
        status: ExecutionStatus,
    ) -> None:
        """Record a new execution; an asynchronous one keeps its request until it finishes."""
        kept = json.dumps(converter.unstructure(request)) if kind is Kind.ASYNC else None
        values = (
            execution_id,
            owner,
            kind.value,
            language,
            request.session_id,
            status.value,
            kept,
            None,
            time.time(),
        )
        await self._call(
            lambda db: db.execute(f"INSERT INTO executions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", values)
        )

    async def set_status(self, execution_id: str, status: ExecutionStatus) -> None:
        """Move an unfinished execution to another unfinished status (queued, running)."""
        await self._call(
            lambda db: db.execute(
                "UPDATE executions SET status = ? WHERE execution_id = ? AND finished_at IS NULL",
                (status.value, execution_id),
            )
        )

    async def finish(self, result: ExecutionResult) -> None:
        """Store an execution's result; its request is dropped."""
        document = json.dumps(converter.unstructure(result))
        await self._call(
            lambda db: db.execute(
                "UPDATE executions SET status = ?, result = ?, request = NULL, finished_at = ? "
                "WHERE execution_id = ? AND finished_at IS NULL",
                (result.status.value, document, time.time(), result.execution_id),
            )
        )

    async def get(self, execution_id: str, owner: str) -> StoredExecution | None:
        """The execution with that id, if ``owner`` created it."""

        def fetch(db: sqlite3.Connection) -> StoredExecution | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM executions WHERE execution_id = ? AND owner = ?",
                (execution_id, owner),
            ).fetchone()
            return _row(row) if row else None

        return await self._call(fetch)

    async def in_session(self, owner: str, session_id: str, limit: int, offset: int) -> list[StoredExecution]:
        """``owner``'s executions in a session, newest first."""

        def fetch(db: sqlite3.Connection) -> list[StoredExecution]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM executions WHERE owner = ? AND session_id = ? "
                "ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                (owner, session_id, limit, offset),
            ).fetchall()
            return [_row(row) for row in rows]

        return await self._call(fetch)

    async def unfinished(self) -> list[StoredExecution]:
        """Every execution without a result, oldest first (what a restart must settle)."""

        def fetch(db: sqlite3.Connection) -> list[StoredExecution]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM executions WHERE finished_at IS NULL ORDER BY created_at, rowid"
            ).fetchall()
            return [_row(row) for row in rows]

        return await self._call(fetch)

    async def purge(self, finished_before: float) -> int:
        """Delete results that finished before ``finished_before``; return how many."""
        cursor = await self._call(
            lambda db: db.execute("DELETE FROM executions WHERE finished_at < ?", (finished_before,))
        )
        return cursor.rowcount
