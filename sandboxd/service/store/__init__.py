"""Durable records, the asynchronous queue, rate limits and hosts: SQLite embedded, or a shared PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sandboxd.config import Config
from sandboxd.service.store.base import (
    CANCEL_CHANNEL,
    OUTPUT_CHANNEL,
    WORK_CHANNEL,
    Bucket,
    DeliveryRecord,
    DeliveryState,
    DueDelivery,
    ExecutionStore,
    HostRecord,
    LiveState,
    Notice,
    OutputChunk,
    StoredExecution,
    StoreUnavailableError,
)
from sandboxd.service.store.postgres import PostgresStore
from sandboxd.service.store.sqlite import SqliteStore

__all__ = [
    "CANCEL_CHANNEL",
    "OUTPUT_CHANNEL",
    "WORK_CHANNEL",
    "Bucket",
    "DeliveryRecord",
    "DeliveryState",
    "DueDelivery",
    "ExecutionStore",
    "HostRecord",
    "LiveState",
    "Notice",
    "OutputChunk",
    "PostgresStore",
    "SqliteStore",
    "StoreUnavailableError",
    "StoredExecution",
    "make_store",
]


def make_store(config: Config, host_id: str) -> ExecutionStore:
    """The store ``config.store.url`` names (not opened yet): SQLite unless it is a postgresql:// URL."""
    store = config.store
    if store.url.startswith("postgresql://"):
        return PostgresStore(store.url, host_id, store.lease_seconds, store.pool_size, store.connect_timeout)
    path = store.url.removeprefix("sqlite:").removeprefix("//")
    return SqliteStore(
        Path(path) if path else config.paths.data / "executions.sqlite3", host_id, store.lease_seconds
    )


async def open_store(config: Config, host_id: str, *, migrate: bool = True) -> ExecutionStore:
    """Open the configured store, its schema brought up to date (unless not ``migrate``)."""
    store = make_store(config, host_id)
    await store.open(migrate=migrate)
    return store
