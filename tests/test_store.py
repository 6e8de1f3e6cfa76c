"""The SQLite execution store on its own."""

from __future__ import annotations

import time
from pathlib import Path

from sandboxd.models import ExecutionRequest, ExecutionResult, ExecutionStatus, Kind
from sandboxd.service.store import ExecutionStore


def result(execution_id: str) -> ExecutionResult:
    """A finished result for ``execution_id``."""
    return ExecutionResult(
        execution_id=execution_id,
        stdout="out\n",
        stderr="",
        exit_code=0,
        execution_time=0.1,
        language="python",
        session_id="s",
        status=ExecutionStatus.COMPLETED,
    )


async def test_async_request_kept_until_finished_then_purged(tmp_path: Path) -> None:
    """An async request is kept until its result arrives; the result is purged after retention."""
    store = ExecutionStore(tmp_path / "db.sqlite3")
    await store.open()
    try:
        request = ExecutionRequest(code="print(1)", language="python", session_id="s", environment={"A": "1"})
        await store.insert("a", "alice", Kind.ASYNC, request, "python", ExecutionStatus.QUEUED)
        await store.insert("b", "alice", Kind.SYNC, request, "python", ExecutionStatus.RUNNING)
        unfinished = await store.unfinished()
        assert [(r.execution_id, r.request) for r in unfinished] == [("a", request), ("b", None)]

        await store.finish(result("a"))
        finished = await store.get("a", "alice")
        assert finished is not None
        assert (finished.status, finished.request, finished.result) == (
            ExecutionStatus.COMPLETED,
            None,
            result("a"),
        )
        assert await store.get("a", "bob") is None

        assert await store.purge(time.time() - 3600) == 0
        assert await store.purge(time.time() + 1) == 1
        assert await store.get("a", "alice") is None
        assert [r.execution_id for r in await store.unfinished()] == ["b"]
    finally:
        await store.close()


async def test_records_survive_reopening(tmp_path: Path) -> None:
    """What was written is there after the store is closed and opened again."""
    path = tmp_path / "db.sqlite3"
    first = ExecutionStore(path)
    await first.open()
    await first.insert(
        "x", "k", Kind.ASYNC, ExecutionRequest(code="1", language="go"), "go", ExecutionStatus.QUEUED
    )
    await first.close()
    second = ExecutionStore(path)
    await second.open()
    try:
        record = await second.get("x", "k")
        assert record is not None
        assert (record.kind, record.status, record.language) == (Kind.ASYNC, ExecutionStatus.QUEUED, "go")
    finally:
        await second.close()
