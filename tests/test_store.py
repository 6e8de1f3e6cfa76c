"""The execution store on its own, every case against SQLite and against PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest

from sandboxd.config import Config, StoreConfig
from sandboxd.models import ExecutionRequest, ExecutionResult, ExecutionStatus, Kind
from sandboxd.service.store import (
    CANCEL_CHANNEL,
    WORK_CHANNEL,
    Bucket,
    ExecutionStore,
    HostRecord,
    make_store,
)
from sandboxd.service.store.migrations import LATEST_VERSION, MIGRATIONS

StoreFactory = Callable[..., ExecutionStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's URL: a fresh SQLite file, or a fresh schema of the tests' PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'db.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def new_store(store_url: str, tmp_path: Path) -> StoreFactory:
    """Make stores on the same database, as several hosts would (not opened)."""

    def make(host_id: str = "host-a", lease: float = 30.0) -> ExecutionStore:
        config = Config(store=StoreConfig(url=store_url, host_id=host_id, lease_seconds=lease))
        return make_store(attrs.evolve(config, paths=attrs.evolve(config.paths, data=tmp_path)), host_id)

    return make


@pytest.fixture
async def store(new_store: StoreFactory) -> AsyncIterator[ExecutionStore]:
    """An open store of host ``host-a``."""
    opened = new_store()
    await opened.open()
    yield opened
    await opened.close()


def result(execution_id: str, status: ExecutionStatus = ExecutionStatus.COMPLETED) -> ExecutionResult:
    """A finished result for ``execution_id``."""
    return ExecutionResult(
        execution_id=execution_id,
        stdout="out\n",
        stderr="",
        exit_code=0,
        execution_time=0.1,
        language="python",
        session_id="s",
        status=status,
    )


REQUEST = ExecutionRequest(code="print(1)", language="python", session_id="s", environment={"A": "1"})


async def queue(store: ExecutionStore, *ids: str) -> None:
    """Submit asynchronous executions with these ids."""
    for execution_id in ids:
        await store.insert(execution_id, "alice", Kind.ASYNC, REQUEST, "python", ExecutionStatus.QUEUED)


async def test_async_request_kept_until_finished_then_purged(store: ExecutionStore) -> None:
    """An async request is kept until its result arrives; the result is purged after retention."""
    await queue(store, "a")
    await store.insert("b", "alice", Kind.SYNC, REQUEST, "python", ExecutionStatus.RUNNING)
    unfinished = await store.unfinished()
    assert [(r.execution_id, r.request) for r in unfinished] == [("a", REQUEST), ("b", None)]

    assert await store.finish(result("a"))
    assert not await store.finish(result("a")), "a result is written once"
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


async def test_records_survive_reopening(new_store: StoreFactory) -> None:
    """What was written is there after the store is closed and opened again."""
    first = new_store()
    await first.open()
    await first.insert(
        "x", "k", Kind.ASYNC, ExecutionRequest(code="1", language="go"), "go", ExecutionStatus.QUEUED
    )
    await first.close()
    second = new_store()
    await second.open()
    try:
        record = await second.get("x", "k")
        assert record is not None
        assert (record.kind, record.status, record.language) == (Kind.ASYNC, ExecutionStatus.QUEUED, "go")
        assert await second.schema_version() == LATEST_VERSION
    finally:
        await second.close()


async def test_session_listing_newest_first(store: ExecutionStore) -> None:
    """A session lists its executions newest first, in pages, and only the owner's."""
    for n in range(5):
        await store.insert(f"id-{n}", "alice", Kind.BATCH, REQUEST, "python", ExecutionStatus.RUNNING)
    await store.insert("other", "bob", Kind.SYNC, REQUEST, "python", ExecutionStatus.RUNNING)
    page = await store.in_session("alice", "s", 3, 1)
    assert [r.execution_id for r in page] == ["id-3", "id-2", "id-1"]


async def test_two_hosts_starting_together_migrate_once(new_store: StoreFactory) -> None:
    """Two stores opened at the same moment on a new database apply each migration exactly once."""
    stores = [new_store(f"host-{n}") for n in range(3)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        async with stores[0].transaction() as tx:
            rows = await tx.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [row[0] for row in rows] == [migration.version for migration in MIGRATIONS]
        assert {await store.schema_version() for store in stores} == {LATEST_VERSION}
    finally:
        for store in stores:
            await store.close()


async def test_claims_are_exclusive_and_bounded(new_store: StoreFactory) -> None:
    """Two hosts claiming at once take disjoint executions, each no more than it asked for."""
    first, second = new_store("host-a"), new_store("host-b")
    await first.open()
    await second.open()
    try:
        ids = [f"q-{n:02}" for n in range(10)]
        await queue(first, *ids)
        claims = await asyncio.gather(first.claim(4), second.claim(4), first.claim(4), second.claim(4))
        claimed = [record.execution_id for records in claims for record in records]
        assert len(claimed) == len(set(claimed)) == 10
        assert all(len(records) <= 4 for records in claims)
        assert {r.claimed_by for r in claims[1]} <= {"host-b"}
        assert await first.claim(4) == [], "nothing is claimed twice while its lease lives"
        assert await first.queued_count() == 10
    finally:
        await first.close()
        await second.close()


async def test_expired_lease_is_claimed_again_under_the_same_id(new_store: StoreFactory) -> None:
    """A host that stops renewing loses its claims; another host claims them under the same ids."""
    dead, alive = new_store("host-dead", lease=0.5), new_store("host-alive", lease=0.5)
    await dead.open()
    await alive.open()
    try:
        await queue(dead, "a", "b")
        assert [r.execution_id for r in await dead.claim(5)] == ["a", "b"]
        assert await alive.claim(5) == []
        assert await dead.renew() == {"a": False, "b": False}
        await asyncio.sleep(1.0)
        taken = await alive.claim(5)
        assert [(r.execution_id, r.claimed_by, r.request) for r in taken] == [
            ("a", "host-alive", REQUEST),
            ("b", "host-alive", REQUEST),
        ]
        assert await dead.renew() == {}, "the dead host's renewal finds it holds nothing any more"
    finally:
        await dead.close()
        await alive.close()


async def test_a_request_claimed_on_another_host_keeps_its_version(new_store: StoreFactory) -> None:
    """The request another host claims to run is the one submitted, its version included."""
    submitting, running = new_store("host-a"), new_store("host-b")
    await submitting.open()
    await running.open()
    try:
        versioned = attrs.evolve(REQUEST, version="3.11")
        await submitting.insert("v", "alice", Kind.ASYNC, versioned, "python3.11", ExecutionStatus.QUEUED)
        [claimed] = await running.claim(1)
        assert (claimed.request, claimed.language) == (versioned, "python3.11")
        await queue(submitting, "plain")
        async with submitting.transaction() as tx:
            [(kept,)] = await tx.fetch("SELECT request FROM executions WHERE execution_id = ?", ("plain",))
        assert "version" not in json.loads(kept), "a sandboxd before versions refuses the field"
    finally:
        await submitting.close()
        await running.close()


async def test_cancel_requests_release_and_interrupted(new_store: StoreFactory) -> None:
    """Cancels are asked in the row; released work is queued again; a gone host's sync rows are settled."""
    store = new_store("host-a", lease=0.5)
    await store.open()
    try:
        await queue(store, "held", "free")
        await store.claim(1)
        cancelled = result("free", ExecutionStatus.CANCELLED)
        assert await store.cancel_unclaimed(cancelled)
        assert not await store.cancel_unclaimed(result("held", ExecutionStatus.CANCELLED))
        assert await store.request_cancel("held")
        assert not await store.request_cancel("free"), "a finished execution has nothing to cancel"
        assert await store.renew() == {"held": True}
        assert await store.release() == 1
        assert [(r.execution_id, r.cancel_requested) for r in await store.claim(5)] == [("held", True)]

        await store.insert("sync", "alice", Kind.SYNC, REQUEST, "python", ExecutionStatus.RUNNING)
        assert [r.execution_id for r in await store.interrupted(own=True)] == ["sync"]
        assert await store.interrupted(own=False) == [], "this host's live sync rows are its own"
        await asyncio.sleep(1.0)
        assert [r.execution_id for r in await store.interrupted(own=False)] == ["sync"]
    finally:
        await store.close()


async def test_notifications_reach_every_listener(new_store: StoreFactory, store_url: str) -> None:
    """New work and cancel requests are notified to the listening host(s)."""
    sender = new_store("host-a")
    await sender.open()
    listener = sender if store_url.startswith("sqlite:") else new_store("host-b")
    if listener is not sender:
        await listener.open()
    heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    listening = asyncio.ensure_future(
        listener.listen(lambda channel, payload: heard.put_nowait((channel, payload)))
    )
    try:
        await asyncio.sleep(0.5)  # the listening connection is up
        await queue(sender, "n-1")
        await sender.request_cancel("n-1")
        wanted = {(WORK_CHANNEL, "n-1"), (CANCEL_CHANNEL, "n-1")}
        seen: set[tuple[str, str]] = set()
        async with asyncio.timeout(10):
            while not wanted <= seen:
                seen.add(await heard.get())
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await sender.close()
        if listener is not sender:
            await listener.close()


async def test_rate_buckets_change_atomically(new_store: StoreFactory) -> None:
    """Two hosts changing one bucket at once lose no change."""
    first, second = new_store("host-a"), new_store("host-b")
    await first.open()
    await second.open()

    def add_one(bucket: Bucket | None) -> Bucket:
        return Bucket(tokens=(bucket.tokens if bucket else 0.0) + 1, updated=time.time())

    try:
        await asyncio.gather(
            *(store.update_bucket("k", add_one) for _ in range(10) for store in (first, second))
        )
        final = await first.update_bucket("k", lambda bucket: bucket or Bucket(0.0, 0.0))
        assert final.tokens == 20
    finally:
        await first.close()
        await second.close()


async def test_hosts_register_and_renew(store: ExecutionStore) -> None:
    """A host's heartbeat registers it, and a later one updates its row."""
    host = HostRecord("host-a", "10.0.0.1:8002", 4, ("go", "python"), 100.0, 101.0)
    await store.heartbeat(host)
    await store.heartbeat(attrs.evolve(host, heartbeat_at=111.0))
    await store.heartbeat(HostRecord("host-b", "10.0.0.2:8002", 2, (), 100.0, 102.0))
    assert await store.hosts() == [
        attrs.evolve(host, heartbeat_at=111.0),
        HostRecord("host-b", "10.0.0.2:8002", 2, (), 100.0, 102.0),
    ]


async def test_a_database_from_before_migrations_is_brought_up_to_date(tmp_path: Path) -> None:
    """An SQLite file written before versioned migrations keeps its rows and gets the new schema."""
    path = tmp_path / "old.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(
            "CREATE TABLE executions (execution_id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
            "kind TEXT NOT NULL, language TEXT NOT NULL, session_id TEXT, status TEXT NOT NULL, "
            "request TEXT, result TEXT, "
            "created_at REAL NOT NULL, finished_at REAL);"
            "INSERT INTO executions VALUES ('old', 'alice', 'async', 'python', NULL, 'queued', "
            """'{"code": "print(1)", "language": "python"}', NULL, 1.0, NULL);"""
        )
    store = make_store(Config(store=StoreConfig(url=f"sqlite://{path}")), "host-a")
    await store.open()
    try:
        assert await store.schema_version() == LATEST_VERSION
        (claimed,) = await store.claim(5)
        assert (claimed.execution_id, claimed.request) == (
            "old",
            ExecutionRequest(code="print(1)", language="python"),
        )
    finally:
        await store.close()
