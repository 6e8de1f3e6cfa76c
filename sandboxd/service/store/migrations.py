"""The store's schema: one versioned list of migrations, written in SQL that SQLite and PostgreSQL both take.

Each backend applies the missing ones at start-up under a lock (``BEGIN IMMEDIATE``
on SQLite, ``pg_advisory_lock`` on PostgreSQL), each in a transaction with its row
in ``schema_migrations``: two hosts starting together apply every migration once.
"""

from __future__ import annotations

from typing import Final

import attrs


@attrs.frozen
class Migration:
    """One step of the schema: its version, what it does, and its statements."""

    version: int
    name: str
    statements: tuple[str, ...]


VERSION_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)

MIGRATIONS: Final = (
    # The single-host schema (IF NOT EXISTS: a database written before migrations has it already).
    Migration(
        1,
        "executions",
        (
            "CREATE TABLE IF NOT EXISTS executions ("
            "execution_id TEXT PRIMARY KEY, owner TEXT NOT NULL, kind TEXT NOT NULL, language TEXT NOT NULL, "
            "session_id TEXT, status TEXT NOT NULL, request TEXT, result TEXT, "
            "created_at DOUBLE PRECISION NOT NULL, finished_at DOUBLE PRECISION)",
            "CREATE INDEX IF NOT EXISTS executions_by_session ON executions (owner, session_id, created_at)",
            "CREATE INDEX IF NOT EXISTS executions_unfinished ON executions (status) "
            "WHERE finished_at IS NULL",
            "CREATE INDEX IF NOT EXISTS executions_by_age ON executions (finished_at)",
        ),
    ),
    # One queue for several hosts: a claim is a lease its host renews; cancels are requested in the row.
    Migration(
        2,
        "claims and leases",
        (
            "ALTER TABLE executions ADD COLUMN claimed_by TEXT",
            "ALTER TABLE executions ADD COLUMN lease_expires_at DOUBLE PRECISION",
            "ALTER TABLE executions ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX executions_by_claim ON executions (claimed_by) WHERE finished_at IS NULL",
            # What claims scan: the unfinished asynchronous executions, oldest first.
            "CREATE INDEX executions_queued ON executions (created_at) "
            "WHERE finished_at IS NULL AND kind = 'async'",
        ),
    ),
    Migration(
        3,
        "rate limits",
        (
            "CREATE TABLE rate_buckets ("
            "api_key TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL)",
        ),
    ),
    Migration(
        4,
        "hosts",
        (
            "CREATE TABLE hosts ("
            "host_id TEXT PRIMARY KEY, address TEXT NOT NULL, capacity INTEGER NOT NULL, "
            "runtimes TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL, "
            "heartbeat_at DOUBLE PRECISION NOT NULL)",
        ),
    ),
    # Webhooks: one row per asynchronous execution with a callback_url, written with the execution;
    # it is due once the execution has finished, and claimed like the queue's rows.
    Migration(
        5,
        "webhook deliveries",
        (
            "CREATE TABLE webhook_deliveries ("
            "delivery_id TEXT PRIMARY KEY, execution_id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL, "
            "url TEXT NOT NULL, state TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
            "next_attempt_at DOUBLE PRECISION NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
            "last_attempt_at DOUBLE PRECISION, last_status INTEGER, last_error TEXT, "
            "claimed_by TEXT, lease_expires_at DOUBLE PRECISION, finished_at DOUBLE PRECISION)",
            # What claims scan: the deliveries not yet done, soonest due first.
            "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) "
            "WHERE finished_at IS NULL",
        ),
    ),
    # Live output: what an asynchronous execution's program has written so far, relayed by the host
    # that runs it for readers on any host, and deleted once the result holds it all. ``attempts``
    # counts an execution's runs: one that runs again (its host stopped) starts its output anew.
    Migration(
        6,
        "live output",
        (
            "ALTER TABLE executions ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
            # data is UTF-8 text, kept as bytes: PostgreSQL's TEXT cannot hold the NUL a program may write.
            "CREATE TABLE execution_output ("
            "execution_id TEXT NOT NULL, attempt INTEGER NOT NULL, seq INTEGER NOT NULL, "
            "stream TEXT NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (execution_id, attempt, seq))",
        ),
    ),
)

LATEST_VERSION: Final = MIGRATIONS[-1].version
