"""Executions as the API sees them: recorded, owned by a key, run now, in a batch, or in the background.

Asynchronous executions are written to the store before they are acknowledged,
so none is lost. They are the queue: each host claims what its free slots can
run and holds the claims as leases it renews; a host that was killed gets its
claims back when it starts, and another host takes them once their leases expire,
always under the same ids.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, Protocol

import attrs

from sandboxd.engine.agent import OutputListener
from sandboxd.engine.engine import (
    Engine,
    Plan,
    RuntimeUnavailableError,
    Timings,
    UnsupportedLanguageError,
    UnsupportedVersionError,
    failed_result,
)
from sandboxd.engine.watch import ContainerdUnavailableError
from sandboxd.models import (
    ExecutionRequest,
    ExecutionResult,
    ExecutionStatus,
    ExecutionSummary,
    Kind,
    LanguageInfo,
    SessionPage,
)
from sandboxd.service.admission import Admission, QueueFullError
from sandboxd.service.live import EventPosition, LiveEvent, LiveFeeds, OutputRelay
from sandboxd.service.store import (
    CANCEL_CHANNEL,
    OUTPUT_CHANNEL,
    ExecutionStore,
    StoredExecution,
    StoreUnavailableError,
)
from sandboxd.service.webhooks import Webhooks
from sandboxd.supervisor import Supervised, Supervisor
from sandboxd.validation import InvalidFieldError, ValidationError, structure

log = logging.getLogger(__name__)

MAX_BATCH: Final = 10
_PURGE_INTERVAL: Final = 600.0
_CANCELLED: Final = "cancelled at the client's request"
_GONE: Final = "interrupted: its host stopped while it ran"
_CANCEL_POLL: Final = 0.1
_STORE_WATCH_INTERVAL: Final = 1.0


class ExecutionNotFoundError(Exception):
    """No execution with that id belongs to the caller."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"Execution not found: {execution_id}")


class AlreadyFinishedError(Exception):
    """The execution to cancel has already finished."""


class ExecutionObserver(Protocol):
    """What the service tells an observer (metrics, the execution log) about each execution."""

    def finished(
        self, result: ExecutionResult, kind: Kind, timings: Timings, *, debug_fields: dict[str, Any]
    ) -> None:
        """An execution has its result; ``debug_fields`` (code, output) may be logged at debug level."""


class ExecutionService:
    """Runs executions for API keys and keeps their records."""

    def __init__(
        self,
        engine: Engine,
        store: ExecutionStore,
        admission: Admission,
        supervisor: Supervisor,
        observer: ExecutionObserver,
        *,
        webhooks: Webhooks,
        async_queue: int,
        retention: dt.timedelta,
        poll: float,
        pending_writes: int,
        event_streams: int,
        heartbeat: float,
    ) -> None:
        self._engine = engine
        self._store = store
        self._admission = admission
        self._supervisor = supervisor
        self._observer = observer
        self._webhooks = webhooks
        self._async_queue = async_queue
        self._retention = retention
        self._poll = poll
        self._jobs: dict[str, Supervised] = {}
        self._wake = asyncio.Event()
        # Whether queued work may wait for a slot here: only then does a freed slot wake the queue
        # (a claim per synchronous request would cost every request a store round trip).
        self._queue_may_wait = True
        # Results finished while the store was unreachable, oldest first, written once it is back.
        self._pending: collections.deque[ExecutionResult] = collections.deque(maxlen=pending_writes)
        self._running: set[str] = set()
        self._cancelled_by_owner: set[str] = set()
        self._shutting_down = False
        self._shutdown_deadline: float | None = None
        self._relay = OutputRelay(store)
        self._feeds = LiveFeeds(
            store, limit=event_streams, poll=poll, heartbeat=heartbeat, runs_here=self._running.__contains__
        )

    # -- checking requests -----------------------------------------------------------------

    def plan(self, request: ExecutionRequest) -> Plan:
        """Validate a synchronous or batch request (400s and 503s happen here, before anything runs)."""
        if request.callback_url is not None:
            raise InvalidFieldError(
                "callback_url", "is only for asynchronous requests (POST /api/v1/execute/async)"
            )
        return self._plan(request)

    def plan_async(self, owner: str, request: ExecutionRequest) -> Plan:
        """Validate an asynchronous request; its callback_url must be deliverable for ``owner``'s key."""
        if request.callback_url is not None:
            self._webhooks.check(owner, request.callback_url)
        return self._plan(request)

    def _plan(self, request: ExecutionRequest) -> Plan:
        plan = self._engine.plan(request)
        self._engine.check_available(plan)
        return plan

    def plan_batch(self, body: object) -> list[Plan]:
        """Validate a whole batch before anything runs; problems name the item's index and field."""
        if not isinstance(body, list):
            raise ValidationError(["Request body must be a JSON array of execution requests"])
        if not body:
            raise ValidationError(["Batch must contain at least one execution"])
        if len(body) > MAX_BATCH:
            raise ValidationError([f"Maximum {MAX_BATCH} executions allowed in a batch"])
        for item in body:
            language = item.get("language") if isinstance(item, dict) else None
            if isinstance(language, str) and not self._engine.supports(language):
                raise UnsupportedLanguageError(language)
        problems: list[str] = []
        plans: list[Plan] = []
        for index, item in enumerate(body):
            try:
                plans.append(self.plan(structure(item, ExecutionRequest)))
            except ValidationError as error:
                problems.extend(f"item {index}: {problem}" for problem in error.problems)
            except InvalidFieldError as error:
                problems.append(f"item {index}: {error.field}: {error.message}")
        if problems:
            raise ValidationError(problems)
        return plans

    def languages(self) -> list[LanguageInfo]:
        """Every runtime, its version and whether it can run now."""
        return self._engine.languages()

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the service's background work: the queue, its leases and notifications, the purge."""
        self._supervisor.start("retention purge", self._purge_forever)
        self._supervisor.start("store listener", lambda: self._store.listen(self._on_notice))
        self._supervisor.start("queue", self._dispatch_forever)
        self._supervisor.start("lease renewal", self._renew_forever)
        self._supervisor.start("store watch", self._watch_store_forever)
        self._supervisor.start("output relay", self._relay.run_forever)

    async def run(self, owner: str, plan: Plan) -> ExecutionResult:
        """Run one execution now, in a slot of its own."""
        self._check_store()
        asked = time.monotonic()
        try:
            async with self._admission.slot():
                return await self._run_recorded(owner, Kind.SYNC, plan, time.monotonic() - asked)
        finally:
            self._slot_freed()

    async def run_batch(self, owner: str, plans: Sequence[Plan]) -> list[ExecutionResult]:
        """Run a batch in order, holding one slot for all of it; each item fails on its own."""
        self._check_store()
        asked = time.monotonic()
        with self._engine.batch(plans):
            async with self._admission.slot():
                waited = time.monotonic() - asked
                try:
                    return [await self._run_recorded(owner, Kind.BATCH, plan, waited if i == 0 else 0.0)
                            for i, plan in enumerate(plans)]  # fmt: skip
                finally:
                    self._slot_freed()

    async def _run_recorded(self, owner: str, kind: Kind, plan: Plan, queue_wait: float) -> ExecutionResult:
        execution_id = str(uuid.uuid4())
        await self._store.insert(
            execution_id, owner, kind, plan.request, plan.runtime.name, ExecutionStatus.RUNNING
        )
        try:
            result = await self._execute(execution_id, plan, kind, queue_wait)
        except ContainerdUnavailableError as error:
            failed = failed_result(execution_id, plan, ExecutionStatus.INTERNAL_ERROR, str(error))
            await self._record(failed)
            if kind is Kind.BATCH:
                return failed  # one item's failure is that item's result, never a failed batch
            raise
        except asyncio.CancelledError:
            note = "cancelled: the client went away or the daemon stopped"
            await self._finish_shielded(failed_result(execution_id, plan, ExecutionStatus.CANCELLED, note))
            raise
        except Exception:
            # A defect, answered with a 500: the record still gets a result, never stays "running".
            note = f"internal error; execution {execution_id}"
            await self._record(failed_result(execution_id, plan, ExecutionStatus.INTERNAL_ERROR, note))
            raise
        await self._record(result)
        return result

    async def _execute(
        self,
        execution_id: str,
        plan: Plan,
        kind: Kind,
        queue_wait: float,
        on_output: OutputListener | None = None,
    ) -> ExecutionResult:
        try:
            result, timings = await self._engine.execute(plan, execution_id, on_output=on_output)
        except RuntimeUnavailableError as error:
            result = failed_result(execution_id, plan, ExecutionStatus.INTERNAL_ERROR, str(error))
            timings = Timings()
        request = plan.request
        self._observer.finished(
            result,
            kind,
            attrs.evolve(timings, queue_wait=queue_wait),
            debug_fields={
                "code": request.code,
                "stdin": request.stdin,
                "stdout": result.stdout,
                "stderr": result.stderr,
            },
        )
        return result

    async def _finish_shielded(self, result: ExecutionResult) -> None:
        await asyncio.shield(asyncio.ensure_future(self._record(result)))

    async def _record(self, result: ExecutionResult) -> None:
        """Write a result; while the store is unreachable keep it in memory, to write once it is back."""
        try:
            await self._store.finish(result)
        except StoreUnavailableError as error:
            reason = str(error)
        else:
            return
        if len(self._pending) == self._pending.maxlen:
            log.error("pending writes full: the result of %s is lost", self._pending[0].execution_id)
        self._pending.append(result)
        log.warning("result of %s kept in memory until the store is back: %s", result.execution_id, reason)

    @property
    def open_streams(self) -> int:
        """Event streams this host serves now."""
        return self._feeds.open_streams

    @property
    def pending_writes(self) -> int:
        """Results kept in memory until the store answers again."""
        return len(self._pending)

    def _check_store(self) -> None:
        """New work is refused at once while the store is known to be unreachable."""
        if not self._store.available:
            raise StoreUnavailableError("its last call failed")

    async def _watch_store_forever(self) -> None:
        """Every second: while the store is away, see whether it is back; then write what was kept."""
        while True:
            try:
                if not self._store.available:
                    await self._store.ping()
                while self._pending:
                    await self._store.finish(self._pending[0])
                    self._pending.popleft()
            except StoreUnavailableError as error:
                log.debug("store still unavailable: %s", error)
            await asyncio.sleep(_STORE_WATCH_INTERVAL)

    async def submit(self, owner: str, plan: Plan) -> str:
        """Queue an asynchronous execution in the store, for whichever host has room; return its id."""
        self._check_store()
        pending = await self._store.queued_count()
        if pending >= self._async_queue:
            raise QueueFullError(f"{pending} asynchronous executions pending")
        execution_id = str(uuid.uuid4())
        await self._store.insert(
            execution_id, owner, Kind.ASYNC, plan.request, plan.runtime.name, ExecutionStatus.QUEUED
        )
        self._wake.set()
        return execution_id

    def _free_capacity(self) -> int:
        """Slots neither this host's claimed executions nor its synchronous work hold or wait for."""
        synchronous = self._admission.running - len(self._running) + self._admission.waiting
        return self._admission.slots - len(self._jobs) - max(synchronous, 0)

    async def _dispatch_forever(self) -> None:
        """Claim queued executions within free capacity whenever woken (new work, a slot freed) or polled."""
        polled = True
        while True:
            self._wake.clear()
            try:
                # Expired leases are taken from their host only once the store has answered a whole
                # lease: after an outage, every live host has renewed its own by then.
                settled = self._store.settled()
                if polled and settled:
                    for record in await self._store.interrupted(own=False):
                        await self._settle(record, ExecutionStatus.INTERNAL_ERROR, _GONE)
                free = self._free_capacity()
                if free > 0 and not self._shutting_down:
                    claimed = await self._store.claim(free, expired=settled)
                    for record in claimed:
                        await self._adopt(record)
                    self._queue_may_wait = len(claimed) == free
                else:
                    self._queue_may_wait = True
            except StoreUnavailableError as error:
                log.warning("queue: %s", error)
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll)
                polled = False
            except TimeoutError:
                polled = True

    async def _adopt(self, record: StoredExecution) -> None:
        """Run a claimed execution here, under its id; one that cannot run on this host fails."""
        if record.execution_id in self._jobs:
            return  # still ours: its lease was renewed meanwhile
        if record.cancel_requested:  # asked while the host that held it was gone
            await self._settle(record, ExecutionStatus.CANCELLED, _CANCELLED)
            return
        if record.request is None:  # never for an unfinished asynchronous record
            await self._settle(record, ExecutionStatus.INTERNAL_ERROR, "its request was not kept")
            return
        try:
            plan = self._engine.plan(record.request)
        except (UnsupportedLanguageError, UnsupportedVersionError, InvalidFieldError) as error:
            await self._settle(record, ExecutionStatus.INTERNAL_ERROR, f"cannot run on this host: {error}")
            return
        self._start_job(record.execution_id, plan)

    def _on_notice(self, channel: str, payload: str) -> None:
        """A notification from the store: new work, a cancel for an execution held here, or live output."""
        if channel == CANCEL_CHANNEL:
            self._cancel_here(payload)
        elif channel == OUTPUT_CHANNEL:
            self._feeds.wake(payload)
        else:
            self._wake.set()
            if not payload:  # listening (re)started: what was missed meanwhile is looked for
                self._feeds.wake_all()

    def _cancel_here(self, execution_id: str) -> None:
        job = self._jobs.get(execution_id)
        if job is not None and execution_id not in self._cancelled_by_owner:
            self._cancelled_by_owner.add(execution_id)
            job.cancel()

    async def _renew_forever(self) -> None:
        """Renew this host's leases every third of the lease; drop what it lost, cancel what was asked."""
        while True:
            await asyncio.sleep(self._store.lease / 3)
            # Only the jobs that were here before the renewal: one claimed while it ran is not in
            # its answer, and cancelling it would leave its claim renewed here forever, never run.
            renewing = list(self._jobs.items())
            try:
                held = await self._store.renew()
            except StoreUnavailableError as error:
                log.warning("lease renewal: %s", error)
                continue
            for execution_id, job in renewing:
                if execution_id not in held and execution_id not in self._cancelled_by_owner:
                    # Finished just now, or its lease expired and another host holds it: stop here.
                    log.warning("execution %s: this host's claim is gone; it stops here", execution_id)
                    job.cancel()
                elif held.get(execution_id):
                    self._cancel_here(execution_id)

    def _start_job(self, execution_id: str, plan: Plan) -> None:
        # Supervised: a job that fails unexpectedly (the store refused a write, say) is logged and
        # run again after a pause; its record stays unfinished until then, so nothing is lost.
        self._jobs[execution_id] = self._supervisor.start(
            f"execution {execution_id}",
            lambda: self._run_async(execution_id, plan),
            forever=False,
            on_done=lambda: self._forget(execution_id),
        )

    def _forget(self, execution_id: str) -> None:
        self._jobs.pop(execution_id, None)
        self._running.discard(execution_id)
        self._cancelled_by_owner.discard(execution_id)
        self._slot_freed()

    def _slot_freed(self) -> None:
        """A slot is free: wake the queue if work may be waiting for one."""
        if self._queue_may_wait:
            self._wake.set()

    async def _run_async(self, execution_id: str, plan: Plan) -> None:
        try:
            asked = time.monotonic()
            async with self._admission.slot(wait=True):
                if self._shutting_down:
                    return  # given back to the queue at shutdown, for the next start or another host
                waited = time.monotonic() - asked
                self._running.add(execution_id)
                while True:
                    attempt = await self._store.start_attempt(execution_id)
                    try:
                        async with self._relay.relaying(execution_id, attempt) as on_output:
                            result = await self._execute(execution_id, plan, Kind.ASYNC, waited, on_output)
                        break
                    except ContainerdUnavailableError:
                        # Accepted work is durable: wait for containerd instead of failing.
                        await self._store.set_status(execution_id, ExecutionStatus.QUEUED)
                        await self._engine.wait_available()
                    except Exception:
                        # A defect of this one execution: it fails, and the next one runs. (A failing
                        # store raises elsewhere in this job, and the supervisor runs it again.)
                        log.exception("asynchronous execution %s failed", execution_id)
                        note = f"internal error; execution {execution_id}"
                        result = failed_result(execution_id, plan, ExecutionStatus.INTERNAL_ERROR, note)
                        break
            await self._record(result)
        except asyncio.CancelledError:
            if execution_id in self._cancelled_by_owner:
                cancelled = failed_result(execution_id, plan, ExecutionStatus.CANCELLED, _CANCELLED)
                await self._finish_shielded(cancelled)
            # Otherwise the daemon is stopping (or lost the claim): the record stays unfinished, and
            # runs again here at the next start or on another host.
            raise
        finally:
            self._running.discard(execution_id)
            if plan.request.callback_url is not None:
                self._webhooks.wake()  # its delivery is due once its result is recorded

    async def get(self, owner: str, execution_id: str) -> StoredExecution:
        """The caller's execution with that id."""
        found = await self._store.get(execution_id, owner)
        if found is None:
            raise ExecutionNotFoundError(execution_id)
        return found

    async def cancel(self, owner: str, execution_id: str) -> StoredExecution:
        """Cancel a queued or running asynchronous execution, on whichever host; return its final record."""
        found = await self.get(owner, execution_id)
        if found.status.finished or found.kind is not Kind.ASYNC:
            raise AlreadyFinishedError(f"Execution {execution_id} has already finished ({found.status})")
        job = self._jobs.get(execution_id)
        if job is not None:
            self._cancelled_by_owner.add(execution_id)
            await job.stop()
            return await self.get(owner, execution_id)
        if await self._store.cancel_unclaimed(_settled(found, ExecutionStatus.CANCELLED, _CANCELLED)):
            return await self.get(owner, execution_id)
        # Another host holds it: it cancels it when notified (or at its next renewal at the latest).
        if await self._store.request_cancel(execution_id):
            deadline = time.monotonic() + self._store.lease
            while time.monotonic() < deadline:
                found = await self.get(owner, execution_id)
                if found.status.finished:
                    return found
                # The host that holds it may be gone: once its lease expires, it is cancelled here.
                if await self._store.cancel_unclaimed(_settled(found, ExecutionStatus.CANCELLED, _CANCELLED)):
                    return await self.get(owner, execution_id)
                await asyncio.sleep(_CANCEL_POLL)
        found = await self.get(owner, execution_id)
        if found.status.finished and found.status is not ExecutionStatus.CANCELLED:
            raise AlreadyFinishedError(f"Execution {execution_id} has already finished ({found.status})")
        return found

    @contextlib.asynccontextmanager
    async def events(
        self, owner: str, execution_id: str, last_event_id: str | None
    ) -> AsyncIterator[AsyncIterator[LiveEvent | None]]:
        """The events of the caller's execution, after ``last_event_id`` (None: from the start).

        An asynchronous execution's output as it is produced, whichever host runs it, then its
        result; a synchronous or batch execution's status, then its output and result once it
        has them. None from the iterator: nothing happened for a while (a heartbeat is due).
        """
        position = EventPosition.parse(last_event_id)
        async with self._feeds.follow(owner, execution_id, position) as events:
            if events is None:
                raise ExecutionNotFoundError(execution_id)
            yield events

    async def session(self, owner: str, session_id: str, limit: int, offset: int) -> SessionPage:
        """A page of the caller's executions in a session, newest first."""
        found = await self._store.in_session(owner, session_id, limit + 1, offset)
        summaries = tuple(
            ExecutionSummary(
                execution_id=item.execution_id,
                status=item.status,
                language=item.language,
                exit_code=item.result.exit_code if item.result else None,
                execution_time=item.result.execution_time if item.result else None,
                passed=item.result.passed if item.result else None,
                created_at=dt.datetime.fromtimestamp(item.created_at, dt.UTC).isoformat(
                    timespec="milliseconds"
                ),
            )
            for item in found[:limit]
        )
        next_offset = offset + limit if len(found) > limit else None
        return SessionPage(session_id=session_id, executions=summaries, next_offset=next_offset)

    async def recover(self) -> int:
        """Settle what this host's previous run left.

        Its synchronous executions fail (their clients are gone); its claimed asynchronous
        ones go back to the queue, to run again under their ids.
        """
        interrupted = await self._store.interrupted(own=True)
        for record in interrupted:
            await self._settle(
                record, ExecutionStatus.INTERNAL_ERROR, "interrupted: the daemon stopped while it ran"
            )
        released = await self._store.release()
        if interrupted or released:
            log.info("recovered %d unfinished executions from the previous run", len(interrupted) + released)
        return len(interrupted) + released

    async def _settle(self, record: StoredExecution, status: ExecutionStatus, note: str) -> None:
        await self._store.finish(_settled(record, status, note))

    async def _purge_forever(self) -> None:
        """Delete finished results older than the retention period, every few minutes."""
        while True:
            try:
                removed = await self._store.purge(time.time() - self._retention.total_seconds())
            except StoreUnavailableError as error:
                log.warning("retention purge: %s", error)
                await asyncio.sleep(_STORE_WATCH_INTERVAL)
                continue
            if removed:
                log.info("purged %d execution records older than %s", removed, self._retention)
            await asyncio.sleep(_PURGE_INTERVAL)

    def begin_shutdown(self, grace: float) -> None:
        """Start no more background executions (queued ones stay queued); running ones get ``grace`` s."""
        if self._shutdown_deadline is None:
            self._shutdown_deadline = time.monotonic() + grace
        self._shutting_down = True
        self._feeds.close()
        for execution_id, job in self._jobs.items():
            if execution_id not in self._running:
                job.cancel()

    async def stop(self) -> None:
        """Let running background executions finish within the grace period, then cancel the rest.

        What was cancelled keeps its unfinished record and goes back to the queue: it runs again
        at the next start, or at once on another host.
        """
        self.begin_shutdown(0)
        deadline = self._shutdown_deadline or time.monotonic()
        jobs = list(self._jobs.values())
        if jobs:
            waiting = [asyncio.ensure_future(job.wait()) for job in jobs]
            await asyncio.wait(waiting, timeout=max(deadline - time.monotonic(), 0))
            await asyncio.gather(*(job.stop() for job in jobs))
        try:
            await self._store.release()
        except StoreUnavailableError as error:
            log.warning(
                "shutdown: claims not given back (%s); they expire after %.0f s", error, self._store.lease
            )


def _settled(record: StoredExecution, status: ExecutionStatus, note: str) -> ExecutionResult:
    """The result of an execution that ends without running: the same fields as ``failed_result``'s."""
    return ExecutionResult(
        execution_id=record.execution_id,
        stdout="",
        stderr=f"sandboxd: {note}\n",
        exit_code=-1,
        execution_time=0.0,
        language=record.language,
        session_id=record.session_id,
        status=status,
    )
