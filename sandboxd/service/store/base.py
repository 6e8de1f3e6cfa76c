"""The execution store's interface and its SQL, shared by the SQLite and PostgreSQL backends.

Every execution (synchronous, batch item or asynchronous) gets a row. An
asynchronous one keeps its request until it has finished, so that whichever host
claims it can run it under the same id; a finished row keeps only the result, and
is purged after the retention period.

Asynchronous executions are the queue: a host claims queued rows within its free
capacity and holds each claim as a lease (``claimed_by``, ``lease_expires_at``)
that it renews; a row whose lease expired (its host died) is claimed again.
Synchronous rows carry their host's claim too, so that only that host's restart,
or the expiry of its leases, settles them.

An asynchronous execution with a ``callback_url`` gets a ``webhook_deliveries`` row in
the transaction that records it; the row is due once the execution has finished, is
claimed under a lease like the queue's rows, and goes with its execution when purged.

While an asynchronous execution runs, the host running it relays its output in
``execution_output`` rows, numbered within the run (``attempt``); readers on any host
are notified of new rows and of the result, which replaces the rows.
"""

from __future__ import annotations

import abc
import enum
import json
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

import attrs

from sandboxd.models import ExecutionRequest, ExecutionResult, ExecutionStatus, Kind, OutputStream
from sandboxd.service.store.migrations import LATEST_VERSION, MIGRATIONS, VERSION_TABLE, Migration
from sandboxd.validation import converter

# Notification channels: new work in the queue, a cancel for the host that holds an execution, and
# news for the readers of an execution's live output (new output, another run, its result).
WORK_CHANNEL: Final = "sandboxd_work"
CANCEL_CHANNEL: Final = "sandboxd_cancel"
OUTPUT_CHANNEL: Final = "sandboxd_output"

# Queries interpolate only these constants; every value is a bound parameter.
_COLUMNS: Final = (
    "execution_id, owner, kind, language, session_id, status, request, result, created_at, claimed_by"
)
# What a read returns: the written columns, and whether a cancel was asked.
_SELECTED: Final = f"{_COLUMNS}, cancel_requested"
_HOST_COLUMNS: Final = "host_id, address, capacity, runtimes, started_at, heartbeat_at"
_FINISH: Final = "status = ?, result = ?, request = NULL, finished_at = ?"
_DELIVERY_COLUMNS: Final = (
    "delivery_id, execution_id, url, state, attempts, last_status, last_error, next_attempt_at, finished_at"
)
# Rows of live output one INSERT writes (five parameters each; SQLite takes 32766 at most).
_ROWS_PER_INSERT: Final = 1000


class StoreUnavailableError(Exception):
    """The store cannot be reached (the database is down or refuses connections)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the execution store is unavailable ({reason}); retry later")


@attrs.frozen
class StoredExecution:
    """One execution as recorded: who asked, what, which host holds it, and (once finished) the result."""

    execution_id: str
    owner: str
    kind: Kind
    language: str
    session_id: str | None
    status: ExecutionStatus
    request: ExecutionRequest | None
    result: ExecutionResult | None
    created_at: float
    claimed_by: str | None = None
    cancel_requested: bool = False


@attrs.frozen
class OutputChunk:
    """A piece of an execution's live output: the ``seq``-th of run ``attempt``, as text."""

    attempt: int
    seq: int
    stream: OutputStream
    text: str


@attrs.frozen
class LiveState:
    """An execution as a reader of its live output sees it: its state, and output of its current run."""

    kind: Kind
    status: ExecutionStatus
    language: str
    session_id: str | None
    # Its current run (0 before the first); ``chunks`` are that run's.
    attempt: int
    result: ExecutionResult | None
    chunks: tuple[OutputChunk, ...]


@attrs.frozen
class HostRecord:
    """A host as it registered itself, with its last heartbeat (seconds since the epoch)."""

    host_id: str
    address: str
    capacity: int
    runtimes: tuple[str, ...]
    started_at: float
    heartbeat_at: float


@attrs.frozen
class Bucket:
    """A rate-limit token bucket as stored: tokens left, as of ``updated`` (seconds since the epoch)."""

    tokens: float
    updated: float


class DeliveryState(enum.StrEnum):
    """Where a webhook delivery is: still to be made (again), made, or given up."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@attrs.frozen
class DueDelivery:
    """A webhook delivery this host claimed for one attempt, with the result it sends."""

    delivery_id: str
    execution_id: str
    owner: str
    url: str
    # Attempts made before this one.
    attempts: int
    # When the execution finished (seconds since the epoch): retries stop a while after it.
    finished_at: float
    result: ExecutionResult


@attrs.frozen
class DeliveryRecord:
    """A webhook delivery as stored: its state, attempts and the last attempt's answer or error."""

    delivery_id: str
    execution_id: str
    url: str
    state: DeliveryState
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: float
    finished_at: float | None


def _execution(row: Sequence[Any]) -> StoredExecution:
    (execution_id, owner, kind, language, session_id, status, request, result, created_at, claimed_by,
     cancel_requested) = row  # fmt: skip
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
        claimed_by=claimed_by,
        cancel_requested=bool(cancel_requested),
    )


def _document(result: ExecutionResult) -> str:
    return json.dumps(converter.unstructure(result))


def _request_document(request: ExecutionRequest) -> str:
    """The request as the queue keeps it; one without a version as a sandboxd before versions reads it."""
    document = converter.unstructure(request)
    if request.version is None:
        del document["version"]  # they refuse a field they do not know, even a null one
    return json.dumps(document)


class Transaction(Protocol):
    """One transaction of a backend; SQL uses ``?`` placeholders whatever the backend."""

    async def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows."""

    async def run(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement and return how many rows it changed."""

    async def notify(self, channel: str, payload: str) -> None:
        """Tell every host listening on ``channel``, once the transaction commits."""


Notice = Callable[[str, str], None]


class ExecutionStore(abc.ABC):
    """The durable records, queue, rate limits and hosts of sandboxd, in SQLite or PostgreSQL.

    ``host_id`` names this daemon in claims; ``lease`` is how long a claim lasts unless renewed.
    """

    # Whether several hosts may share the store (and so its rate limits).
    shared: bool = False
    # SQL suffixes where the backends differ: row locks exist only on PostgreSQL.
    skip_locked: str = ""
    for_update: str = ""

    def __init__(self, host_id: str, lease: float, clock: Callable[[], float] = time.time) -> None:
        self.host_id = host_id
        self.lease = lease
        self._clock = clock
        self._last_created = 0.0
        self._reachable_since: float | None = time.monotonic()

    @property
    def available(self) -> bool:
        """Whether the store answered the last call made to it."""
        return self._reachable_since is not None

    def reached(self, answered: bool) -> None:
        """Record whether a call reached the database."""
        if not answered:
            self._reachable_since = None
        elif self._reachable_since is None:
            self._reachable_since = time.monotonic()

    def settled(self) -> bool:
        """Whether the store has answered for a whole lease: every live host had the time to renew.

        Before that, after an outage, a lease may have expired only because its host could not
        renew it either: what it holds is not taken from it.
        """
        since = self._reachable_since
        return since is not None and time.monotonic() - since >= self.lease

    # -- what each backend provides ---------------------------------------------------------

    @abc.abstractmethod
    async def open(self, *, migrate: bool = True) -> None:
        """Connect, then (``migrate``) apply the missing migrations under the backend's lock."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect."""

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """One transaction; ``StoreUnavailableError`` when the database cannot be reached."""

    @abc.abstractmethod
    async def listen(self, on_notice: Notice) -> None:
        """Call ``on_notice(channel, payload)`` for every notification, until cancelled."""

    # -- migrations ---------------------------------------------------------------------------

    @staticmethod
    async def apply_migrations(tx: Transaction, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
        """Apply, inside ``tx`` (which holds the migration lock), the migrations not yet applied."""
        await tx.run(VERSION_TABLE)
        applied = {row[0] for row in await tx.fetch("SELECT version FROM schema_migrations")}
        done = []
        for migration in migrations:
            if migration.version in applied:
                continue
            for statement in migration.statements:
                await tx.run(statement)
            await tx.run(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time()),
            )
            done.append(migration.version)
        return done

    async def ping(self) -> None:
        """One round trip to the database (``StoreUnavailableError`` if it does not answer)."""
        async with self.transaction() as tx:
            await tx.fetch("SELECT 1")

    async def schema_version(self) -> int:
        """The newest migration applied to the database (0 for none)."""
        async with self.transaction() as tx:
            await tx.run(VERSION_TABLE)
            rows = await tx.fetch("SELECT MAX(version) FROM schema_migrations")
        return int(rows[0][0] or 0)

    latest_version: Final = LATEST_VERSION

    # -- records ------------------------------------------------------------------------------

    def _created_now(self) -> float:
        # Strictly increasing on this host, so that listings order a batch's items as they ran.
        self._last_created = max(self._clock(), self._last_created + 1e-6)
        return self._last_created

    async def insert(  # noqa: PLR0917 -- the columns of a new row
        self,
        execution_id: str,
        owner: str,
        kind: Kind,
        request: ExecutionRequest,
        language: str,
        status: ExecutionStatus,
    ) -> None:
        """Record a new execution; an asynchronous one is queued for any host, others are this host's."""
        queued = kind is Kind.ASYNC
        kept = _request_document(request) if queued else None
        claimed_by, lease = (None, None) if queued else (self.host_id, self._clock() + self.lease)
        created = self._created_now()
        values = (
            execution_id, owner, kind.value, language, request.session_id, status.value, kept,
            None, created, claimed_by, lease,
        )  # fmt: skip
        async with self.transaction() as tx:
            await tx.run(
                f"INSERT INTO executions ({_COLUMNS}, lease_expires_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                values,
            )
            if queued and request.callback_url is not None:
                # Due as soon as the execution has a result: the row exists before anyone can finish it.
                await tx.run(
                    "INSERT INTO webhook_deliveries (delivery_id, execution_id, owner, url, state, "
                    "created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (str(uuid.uuid4()), execution_id, owner, request.callback_url,
                     DeliveryState.PENDING.value, created, created),
                )  # fmt: skip
            if queued:
                await tx.notify(WORK_CHANNEL, execution_id)

    async def set_status(self, execution_id: str, status: ExecutionStatus) -> None:
        """Move an unfinished execution to another unfinished status (queued, running)."""
        async with self.transaction() as tx:
            await tx.run(
                "UPDATE executions SET status = ? WHERE execution_id = ? AND finished_at IS NULL",
                (status.value, execution_id),
            )

    async def finish(self, result: ExecutionResult) -> bool:
        """Store an execution's result, unless it has one already; its request and live output are dropped."""
        async with self.transaction() as tx:
            finished = await tx.fetch(
                f"UPDATE executions SET {_FINISH} WHERE execution_id = ? AND finished_at IS NULL "
                "RETURNING kind",
                (result.status.value, _document(result), self._clock(), result.execution_id),
            )
            await self._finished(tx, result.execution_id, finished)
        return bool(finished)

    @staticmethod
    async def _finished(tx: Transaction, execution_id: str, finished: Sequence[tuple[Any, ...]]) -> None:
        """The execution got its result in ``tx`` (if ``finished`` holds its kind): its live output goes.

        Only asynchronous executions relay output, and only their readers are notified: the
        synchronous path keeps its cost (their rare readers see the result at their next poll).
        """
        if finished and finished[0][0] == Kind.ASYNC.value:
            await tx.run("DELETE FROM execution_output WHERE execution_id = ?", (execution_id,))
            await tx.notify(OUTPUT_CHANNEL, execution_id)

    async def get(self, execution_id: str, owner: str) -> StoredExecution | None:
        """The execution with that id, if ``owner`` created it."""
        async with self.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_SELECTED} FROM executions WHERE execution_id = ? AND owner = ?",
                (execution_id, owner),
            )
        return _execution(rows[0]) if rows else None

    async def in_session(self, owner: str, session_id: str, limit: int, offset: int) -> list[StoredExecution]:
        """``owner``'s executions in a session, newest first."""
        async with self.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_SELECTED} FROM executions WHERE owner = ? AND session_id = ? "
                "ORDER BY created_at DESC, execution_id DESC LIMIT ? OFFSET ?",
                (owner, session_id, limit, offset),
            )
        return [_execution(row) for row in rows]

    async def unfinished(self) -> list[StoredExecution]:
        """Every execution without a result, oldest first."""
        async with self.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_SELECTED} FROM executions WHERE finished_at IS NULL "
                "ORDER BY created_at, execution_id"
            )
        return [_execution(row) for row in rows]

    async def purge(self, finished_before: float) -> int:
        """Delete results finished before ``finished_before`` (with their deliveries); return how many.

        Live output left behind is deleted too: a host that lost its claim may have relayed some
        after another host finished the execution.
        """
        async with self.transaction() as tx:
            await tx.run(
                "DELETE FROM webhook_deliveries WHERE execution_id IN "
                "(SELECT execution_id FROM executions WHERE finished_at < ?)",
                (finished_before,),
            )
            await tx.run(
                "DELETE FROM execution_output WHERE execution_id NOT IN "
                "(SELECT execution_id FROM executions WHERE finished_at IS NULL)"
            )
            return await tx.run("DELETE FROM executions WHERE finished_at < ?", (finished_before,))

    # -- live output ------------------------------------------------------------------------------

    async def start_attempt(self, execution_id: str) -> int:
        """Mark an unfinished execution running as its next run; return that run's number (0 if finished).

        The output of its earlier runs is dropped: it starts anew.
        """
        async with self.transaction() as tx:
            rows = await tx.fetch(
                "UPDATE executions SET status = ?, attempts = attempts + 1 "
                "WHERE execution_id = ? AND finished_at IS NULL RETURNING attempts",
                (ExecutionStatus.RUNNING.value, execution_id),
            )
            if not rows:
                return 0
            attempt = int(rows[0][0])
            if attempt > 1:
                await tx.run(
                    "DELETE FROM execution_output WHERE execution_id = ? AND attempt < ?",
                    (execution_id, attempt),
                )
            await tx.notify(OUTPUT_CHANNEL, execution_id)
        return attempt

    async def append_output(self, chunks: Sequence[tuple[str, OutputChunk]]) -> None:
        """Add (execution id, chunk) pairs to live output, in one transaction; readers are notified.

        A chunk written already (a retry after a commit whose answer was lost) is kept as it was.
        """
        rows = [
            (execution_id, chunk.attempt, chunk.seq, chunk.stream.value, chunk.text.encode())
            for execution_id, chunk in chunks
        ]
        async with self.transaction() as tx:
            # Many rows to a statement (a round trip each on PostgreSQL), within SQLite's bound on parameters.
            for start in range(0, len(rows), _ROWS_PER_INSERT):
                batch = rows[start : start + _ROWS_PER_INSERT]
                await tx.run(
                    "INSERT INTO execution_output (execution_id, attempt, seq, stream, data) VALUES "
                    f"{', '.join(['(?, ?, ?, ?, ?)'] * len(batch))} ON CONFLICT DO NOTHING",
                    [value for row in batch for value in row],
                )
            for execution_id in dict.fromkeys(execution_id for execution_id, _ in chunks):
                await tx.notify(OUTPUT_CHANNEL, execution_id)

    async def live(
        self, execution_id: str, owner: str, after: tuple[int, int], limit: int
    ) -> LiveState | None:
        """``owner``'s execution as its live output's reader sees it, or None if there is none.

        Its chunks are those of its current run, after ``after`` (attempt, seq) if that is the
        current run, from its start if not; at most ``limit``; none once it has its result.
        """
        async with self.transaction() as tx:
            rows = await tx.fetch(
                "SELECT kind, status, language, session_id, attempts, result FROM executions "
                "WHERE execution_id = ? AND owner = ?",
                (execution_id, owner),
            )
            if not rows:
                return None
            kind, status, language, session_id, attempt, result = rows[0]
            found: list[tuple[Any, ...]] = []
            if result is None:
                seq = after[1] if after[0] == attempt else 0
                found = await tx.fetch(
                    "SELECT seq, stream, data FROM execution_output "
                    "WHERE execution_id = ? AND attempt = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (execution_id, attempt, seq, limit),
                )
        return LiveState(
            kind=Kind(kind),
            status=ExecutionStatus(status),
            language=language,
            session_id=session_id,
            attempt=attempt,
            result=converter.structure(json.loads(result), ExecutionResult) if result else None,
            chunks=tuple(
                OutputChunk(attempt, seq, OutputStream(stream), bytes(data).decode())
                for seq, stream, data in found
            ),
        )

    # -- the queue ------------------------------------------------------------------------------

    async def queued_count(self) -> int:
        """How many asynchronous executions are accepted and not finished, on every host."""
        async with self.transaction() as tx:
            rows = await tx.fetch(
                "SELECT COUNT(*) FROM executions WHERE finished_at IS NULL AND kind = ?", (Kind.ASYNC.value,)
            )
        return int(rows[0][0])

    async def claim(self, limit: int, *, expired: bool = True) -> list[StoredExecution]:
        """Claim up to ``limit`` queued asynchronous executions, oldest first.

        With ``expired``, executions whose lease expired (their host is gone) are claimed too.
        """
        now = self._clock() if expired else float("-inf")
        async with self.transaction() as tx:
            rows = await tx.fetch(
                "UPDATE executions SET claimed_by = ?, lease_expires_at = ?, status = ? "
                "WHERE execution_id IN (SELECT execution_id FROM executions "
                "WHERE kind = ? AND finished_at IS NULL AND (claimed_by IS NULL OR lease_expires_at < ?) "
                f"ORDER BY created_at LIMIT ?{self.skip_locked}) RETURNING {_SELECTED}",
                (self.host_id, now + self.lease, ExecutionStatus.QUEUED.value, Kind.ASYNC.value, now, limit),
            )
        return sorted((_execution(row) for row in rows), key=lambda record: record.created_at)

    async def renew(self) -> dict[str, bool]:
        """Renew every lease this host holds; return what it still holds, and whether a cancel was asked."""
        async with self.transaction() as tx:
            rows = await tx.fetch(
                "UPDATE executions SET lease_expires_at = ? WHERE claimed_by = ? AND finished_at IS NULL "
                "RETURNING execution_id, cancel_requested",
                (self._clock() + self.lease, self.host_id),
            )
        return {execution_id: bool(requested) for execution_id, requested in rows}

    async def release(self) -> int:
        """Give this host's unfinished asynchronous executions back to the queue (at shutdown)."""
        async with self.transaction() as tx:
            released = await tx.run(
                "UPDATE executions SET claimed_by = NULL, lease_expires_at = NULL, status = ? "
                "WHERE claimed_by = ? AND kind = ? AND finished_at IS NULL",
                (ExecutionStatus.QUEUED.value, self.host_id, Kind.ASYNC.value),
            )
            if released:
                await tx.notify(WORK_CHANNEL, "")
        return released

    async def interrupted(self, *, own: bool) -> list[StoredExecution]:
        """Unfinished synchronous and batch executions whose host is gone.

        Their lease expired, or (``own``, at start-up) this host held them in its earlier run.
        """
        mine = "claimed_by = ? OR claimed_by IS NULL OR " if own else ""
        params: tuple[object, ...] = (Kind.ASYNC.value, self.host_id) if own else (Kind.ASYNC.value,)
        async with self.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_SELECTED} FROM executions WHERE kind != ? AND finished_at IS NULL "
                f"AND ({mine}lease_expires_at < ?)",
                (*params, self._clock()),
            )
        return [_execution(row) for row in rows]

    async def cancel_unclaimed(self, result: ExecutionResult) -> bool:
        """Finish a queued execution no live host holds with ``result`` (a cancellation); False if held."""
        async with self.transaction() as tx:
            finished = await tx.fetch(
                f"UPDATE executions SET {_FINISH} WHERE execution_id = ? AND finished_at IS NULL "
                "AND (claimed_by IS NULL OR lease_expires_at < ?) RETURNING kind",
                (result.status.value, _document(result), self._clock(), result.execution_id, self._clock()),
            )
            await self._finished(tx, result.execution_id, finished)
        return bool(finished)

    async def request_cancel(self, execution_id: str) -> bool:
        """Mark an unfinished execution cancel-requested and tell the host holding it; False if finished."""
        async with self.transaction() as tx:
            changed = await tx.run(
                "UPDATE executions SET cancel_requested = 1 WHERE execution_id = ? AND finished_at IS NULL",
                (execution_id,),
            )
            if changed:
                await tx.notify(CANCEL_CHANNEL, execution_id)
        return changed > 0

    # -- rate limits ------------------------------------------------------------------------------

    async def update_bucket(self, key: str, change: Callable[[Bucket | None], Bucket]) -> Bucket:
        """Replace ``key``'s bucket with ``change(current)``, atomically for every host; return it."""
        async with self.transaction() as tx:
            # The row exists before it is read for update: two hosts creating it at once wait in turn.
            created = await tx.fetch(
                "INSERT INTO rate_buckets (api_key, tokens, updated) VALUES (?, 0, 0) "
                "ON CONFLICT (api_key) DO NOTHING RETURNING api_key",
                (key,),
            )
            rows = await tx.fetch(
                f"SELECT tokens, updated FROM rate_buckets WHERE api_key = ?{self.for_update}", (key,)
            )
            bucket = change(None if created else Bucket(*rows[0]))
            await tx.run(
                "UPDATE rate_buckets SET tokens = ?, updated = ? WHERE api_key = ?",
                (bucket.tokens, bucket.updated, key),
            )
        return bucket

    async def read_bucket(self, key: str) -> Bucket | None:
        """``key``'s bucket as stored, if it has one."""
        async with self.transaction() as tx:
            rows = await tx.fetch("SELECT tokens, updated FROM rate_buckets WHERE api_key = ?", (key,))
        return Bucket(*rows[0]) if rows else None

    # -- hosts ------------------------------------------------------------------------------------

    async def heartbeat(self, host: HostRecord) -> None:
        """Register this host, or renew its registration."""
        async with self.transaction() as tx:
            await tx.run(
                f"INSERT INTO hosts ({_HOST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (host_id) DO UPDATE SET address = excluded.address, "
                "capacity = excluded.capacity, runtimes = excluded.runtimes, "
                "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
                (host.host_id, host.address, host.capacity, ",".join(host.runtimes), host.started_at,
                 host.heartbeat_at),
            )  # fmt: skip

    async def hosts(self) -> list[HostRecord]:
        """Every host that registered, by id."""
        async with self.transaction() as tx:
            rows = await tx.fetch(f"SELECT {_HOST_COLUMNS} FROM hosts ORDER BY host_id")
        return [
            HostRecord(host_id, address, capacity, tuple(filter(None, runtimes.split(","))), started, beat)
            for host_id, address, capacity, runtimes, started, beat in rows
        ]

    # -- webhook deliveries -----------------------------------------------------------------------

    async def claim_deliveries(self, limit: int, lease: float) -> list[DueDelivery]:
        """Claim up to ``limit`` due deliveries of finished executions for ``lease`` s, soonest due first.

        A delivery whose claim expired (its host died during an attempt) is due again.
        """
        now = self._clock()
        async with self.transaction() as tx:
            claimed = await tx.fetch(
                "UPDATE webhook_deliveries SET claimed_by = ?, lease_expires_at = ? "
                "WHERE delivery_id IN (SELECT d.delivery_id FROM webhook_deliveries d "
                "WHERE d.finished_at IS NULL AND d.next_attempt_at <= ? "
                "AND (d.claimed_by IS NULL OR d.lease_expires_at < ?) AND EXISTS (SELECT 1 FROM executions e "
                "WHERE e.execution_id = d.execution_id AND e.finished_at IS NOT NULL) "
                f"ORDER BY d.next_attempt_at LIMIT ?{self.skip_locked}) RETURNING delivery_id",
                (self.host_id, now + lease, now, now, limit),
            )
            if not claimed:
                return []
            rows = await tx.fetch(
                "SELECT d.delivery_id, d.execution_id, d.owner, d.url, d.attempts, e.finished_at, e.result "
                "FROM webhook_deliveries d JOIN executions e ON e.execution_id = d.execution_id "
                f"WHERE d.delivery_id IN ({', '.join('?' * len(claimed))}) ORDER BY d.next_attempt_at",
                [row[0] for row in claimed],
            )
        return [
            DueDelivery(
                delivery_id, execution_id, owner, url, attempts, finished_at,
                converter.structure(json.loads(result), ExecutionResult),
            )
            for delivery_id, execution_id, owner, url, attempts, finished_at, result in rows
        ]  # fmt: skip

    async def record_attempt(
        self,
        delivery_id: str,
        *,
        state: DeliveryState,
        status: int | None,
        error: str | None,
        next_attempt_at: float,
    ) -> bool:
        """Record an attempt this host made and give the claim back; False if the claim was lost meanwhile.

        ``state`` is pending to retry at ``next_attempt_at``, else the delivery is done.
        """
        now = self._clock()
        finished = None if state is DeliveryState.PENDING else now
        async with self.transaction() as tx:
            changed = await tx.run(
                "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1, last_attempt_at = ?, "
                "last_status = ?, last_error = ?, next_attempt_at = ?, finished_at = ?, claimed_by = NULL, "
                "lease_expires_at = NULL WHERE delivery_id = ? AND claimed_by = ? AND finished_at IS NULL",
                (state.value, now, status, error, next_attempt_at, finished, delivery_id, self.host_id),
            )
        return changed > 0

    async def release_deliveries(self) -> int:
        """Give back this host's claims on deliveries (at start-up and shutdown): due again at once."""
        async with self.transaction() as tx:
            return await tx.run(
                "UPDATE webhook_deliveries SET claimed_by = NULL, lease_expires_at = NULL "
                "WHERE claimed_by = ? AND finished_at IS NULL",
                (self.host_id,),
            )

    async def delivery(self, execution_id: str) -> DeliveryRecord | None:
        """The webhook delivery of an execution, if its request had a callback_url."""
        async with self.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE execution_id = ?", (execution_id,)
            )
        if not rows:
            return None
        delivery_id, execution, url, state, attempts, status, error, next_at, finished = rows[0]
        return DeliveryRecord(
            delivery_id, execution, url, DeliveryState(state), attempts, status, error, next_at, finished
        )
