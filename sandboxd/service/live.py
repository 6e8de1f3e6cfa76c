"""Live output: the host running an asynchronous execution relays it through the store; readers follow.

The reader may be on any host (behind a load balancer, the client's connection lands
anywhere), so there is one path: the running host writes, every reader reads the store,
woken by the store's notifications and polling when none come.

Writing is coalesced: what the programs of this host write within ``interval`` (or until
``flush_bytes`` wait) goes to the store in one transaction, one row per stretch of one
stream. A program that ends within the interval (a hello) costs no write at all: its
result holds its output. Text is decoded here, once, incrementally: a character split
between two writes waits until it is whole, and bytes that are not UTF-8 become U+FFFD,
as in the result, so that the chunks of a stream add up to the result's text.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import enum
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any, Final

import attrs

from sandboxd.engine.agent import OutputListener
from sandboxd.models import ExecutionState, ExecutionStatus, OutputEvent, OutputStream, RestartEvent
from sandboxd.service.store import ExecutionStore, LiveState, OutputChunk, StoreUnavailableError
from sandboxd.validation import InvalidFieldError, converter

log = logging.getLogger(__name__)

FLUSH_INTERVAL: Final = 0.1
FLUSH_BYTES: Final = 64 << 10
# One row, and one event, holds at most this much text (at most 32 KiB of UTF-8).
MAX_CHUNK_CHARS: Final = 8 << 10
# What one reader reads from the store at a time, and so holds at most before it is sent.
PAGE_ROWS: Final = 16
_RETRY_PAUSE: Final = 1.0
_EVENT_ID = re.compile(r"([0-9]{1,9})-([0-9]{1,12})-([0-9]{1,12})-([0-9]{1,12})")


class EventKind(enum.StrEnum):
    """What an event of an execution's stream says."""

    # Where the execution is (queued, running), when a reader starts and whenever it changes.
    STATUS = "status"
    STDOUT = "stdout"
    STDERR = "stderr"
    # The execution runs again from its start: the output sent so far is void.
    RESET = "reset"
    # Its result, as GET /api/v1/executions/{id} answers: the stream's last event.
    RESULT = "result"


class TooManyStreamsError(Exception):
    """As many event streams as this host may serve are open."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"Too many open event streams: at most {limit} on this host; retry later")


def _pieces(text: str) -> Iterator[str]:
    """``text`` in pieces of at most MAX_CHUNK_CHARS."""
    for start in range(0, len(text), MAX_CHUNK_CHARS):
        yield text[start : start + MAX_CHUNK_CHARS]


class _Relayed:
    """One run of an execution whose output is relayed: text waiting, and rows not written yet."""

    def __init__(self, execution_id: str, attempt: int) -> None:
        self.execution_id = execution_id
        self.attempt = attempt
        self._decoders = {stream: codecs.getincrementaldecoder("utf-8")("replace") for stream in OutputStream}
        # Stretches of one stream each, oldest first, in pieces (joined once, when written).
        self._waiting: list[tuple[OutputStream, list[str]]] = []
        self.waiting_bytes = 0
        self.unwritten: list[OutputChunk] = []
        self._seq = 0

    def add(self, stream: OutputStream, data: bytes) -> None:
        text = self._decoders[stream].decode(data)
        self.waiting_bytes += len(data)
        if not text:
            return
        if self._waiting and self._waiting[-1][0] is stream:
            self._waiting[-1][1].append(text)
        else:
            self._waiting.append((stream, [text]))

    def take(self) -> list[OutputChunk]:
        """Number what waits as rows; return every row not written yet."""
        for stream, pieces in self._waiting:
            for piece in _pieces("".join(pieces)):
                self._seq += 1
                self.unwritten.append(OutputChunk(self.attempt, self._seq, stream, piece))
        self._waiting.clear()
        self.waiting_bytes = 0
        return list(self.unwritten)


class OutputRelay:
    """Relays the output of this host's asynchronous executions to the store, coalesced."""

    def __init__(
        self, store: ExecutionStore, interval: float = FLUSH_INTERVAL, flush_bytes: int = FLUSH_BYTES
    ) -> None:
        self._store = store
        self._interval = interval
        self._flush_bytes = flush_bytes
        self._relayed: dict[str, _Relayed] = {}
        self._due = asyncio.Event()
        self._full = asyncio.Event()
        self._writing = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def relaying(self, execution_id: str, attempt: int) -> AsyncIterator[OutputListener | None]:
        """Relay what the listener given hears as run ``attempt`` of the execution, until the block ends.

        What has not been written by then never is: the execution's result, recorded next, holds it.
        Run 0 (the execution had its result before it started) gets no listener: nobody follows it.
        """
        if attempt == 0:
            yield None
            return
        relayed = _Relayed(execution_id, attempt)
        self._relayed[execution_id] = relayed
        try:
            yield lambda stream, data: self._add(relayed, stream, data)
        finally:
            self._relayed.pop(execution_id, None)
            # A write under way may hold rows of it: it ends before the result (which drops them) is written.
            async with self._writing:
                pass

    def _add(self, relayed: _Relayed, stream: OutputStream, data: bytes) -> None:
        relayed.add(stream, data)
        self._due.set()
        if relayed.waiting_bytes >= self._flush_bytes:
            self._full.set()

    async def run_forever(self) -> None:
        """Write what waits: ``interval`` after the first of it arrived, or once ``flush_bytes`` wait."""
        self._due.set()  # restarted after a failure: what its last write held waits still
        while True:
            await self._due.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self._interval)
            self._due.clear()
            self._full.clear()
            if not await self.flush():
                self._due.set()
                await asyncio.sleep(_RETRY_PAUSE)

    async def flush(self) -> bool:
        """Write every relayed execution's waiting output in one transaction; False if the store is away."""
        async with self._writing:
            taken = {relayed: relayed.take() for relayed in self._relayed.values()}
            rows = [(relayed.execution_id, chunk) for relayed, chunks in taken.items() for chunk in chunks]
            if not rows:
                return True
            try:
                await self._store.append_output(rows)
            except StoreUnavailableError as error:
                # Kept to write once the store answers; the output limit bounds what waits.
                log.debug("live output waits for the store: %s", error)
                return False
            for relayed, chunks in taken.items():
                del relayed.unwritten[: len(chunks)]
        return True


@attrs.frozen
class EventPosition:
    """Where a reader is in an execution's output: run ``attempt``, chunk ``seq``, characters of each stream.

    The characters it has of each stream say what of the result's text it lacks, once the
    result replaces the chunks (or when it came before they were written).
    """

    attempt: int = 0
    seq: int = 0
    stdout: int = 0
    stderr: int = 0

    @classmethod
    def parse(cls, event_id: str | None) -> EventPosition:
        """The position after the event with this id (a ``Last-Event-ID``); the start for None."""
        if event_id is None:
            return cls()
        found = _EVENT_ID.fullmatch(event_id.strip())
        if found is None:
            raise InvalidFieldError("Last-Event-ID", "must be the id of an event of this stream")
        return cls(*(int(number) for number in found.groups()))

    def after(self, stream: OutputStream, seq: int, text: str) -> EventPosition:
        """The position after chunk ``seq`` of this run, ``text`` on ``stream``."""
        if stream is OutputStream.STDOUT:
            return attrs.evolve(self, seq=seq, stdout=self.stdout + len(text))
        return attrs.evolve(self, seq=seq, stderr=self.stderr + len(text))

    def __str__(self) -> str:
        return f"{self.attempt}-{self.seq}-{self.stdout}-{self.stderr}"


@attrs.frozen
class LiveEvent:
    """One event of an execution's stream: its kind and its data, ready for JSON."""

    kind: EventKind
    data: Any
    # Set on output events only: where a reconnecting reader resumes.
    event_id: str | None = None


class LiveFeeds:
    """The event streams this host serves: each follows one execution in the store.

    ``runs_here`` says whether an execution runs on this host: at shutdown, its streams go on
    until its result (its run has the grace period), and every other stream ends at once.
    """

    def __init__(
        self,
        store: ExecutionStore,
        *,
        limit: int,
        poll: float,
        heartbeat: float,
        runs_here: Callable[[str], bool],
    ) -> None:
        self._store = store
        self._limit = limit
        self._poll = poll
        self._heartbeat = heartbeat
        self._runs_here = runs_here
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._open = 0
        self._closing = False

    @property
    def open_streams(self) -> int:
        """How many streams this host serves now."""
        return self._open

    def wake(self, execution_id: str) -> None:
        """News of an execution (output, another run, its result): its readers read the store again."""
        for woken in self._waiting.get(execution_id, ()):
            woken.set()

    def wake_all(self) -> None:
        """Every reader reads the store again (notifications may have been missed)."""
        for waiting in self._waiting.values():
            for woken in waiting:
                woken.set()

    def close(self) -> None:
        """The daemon stops: streams of executions that run elsewhere end now, the others at their result."""
        self._closing = True
        self.wake_all()

    @contextlib.asynccontextmanager
    async def follow(
        self, owner: str, execution_id: str, position: EventPosition
    ) -> AsyncIterator[AsyncIterator[LiveEvent | None] | None]:
        """The events of ``owner``'s execution from ``position`` (None if it has none such).

        The iterator yields None when nothing happened for a heartbeat interval: time to tell the
        client (and proxies) that the stream is alive.
        """
        if self._open >= self._limit:
            raise TooManyStreamsError(self._limit)
        woken = asyncio.Event()
        self._open += 1
        self._waiting.setdefault(execution_id, set()).add(woken)
        try:
            state = await self._store.live(execution_id, owner, (position.attempt, position.seq), PAGE_ROWS)
            if state is None:
                yield None
                return
            events = self._events(owner, execution_id, position, state, woken)
            try:
                yield events
            finally:
                await events.aclose()
        finally:
            self._open -= 1
            waiting = self._waiting[execution_id]
            waiting.discard(woken)
            if not waiting:
                del self._waiting[execution_id]

    async def _events(
        self, owner: str, execution_id: str, position: EventPosition, state: LiveState, woken: asyncio.Event
    ) -> AsyncGenerator[LiveEvent | None]:
        shown: ExecutionStatus | None = None
        beat = time.monotonic() + self._heartbeat
        while True:
            news, position, shown = _news(execution_id, state, position, shown)
            for event in news:
                yield event
            if news:
                beat = time.monotonic() + self._heartbeat
            if state.result is not None:
                return
            if len(state.chunks) < PAGE_ROWS:  # all read: wait for news
                if self._closing and not self._runs_here(execution_id):
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), max(min(self._poll, beat - time.monotonic()), 0))
                if time.monotonic() >= beat:
                    yield None
                    beat = time.monotonic() + self._heartbeat
            woken.clear()  # before the read: news arriving during it wakes the next wait at once
            try:
                found = await self._store.live(
                    execution_id, owner, (position.attempt, position.seq), PAGE_ROWS
                )
            except StoreUnavailableError as error:
                log.debug("event stream of %s waits for the store: %s", execution_id, error)
                found = attrs.evolve(state, chunks=())
            if found is None:  # purged meanwhile (its retention ended)
                return
            state = found


def _news(
    execution_id: str, state: LiveState, position: EventPosition, shown: ExecutionStatus | None
) -> tuple[list[LiveEvent], EventPosition, ExecutionStatus | None]:
    """The events ``state`` holds for a reader at ``position`` that last showed status ``shown``.

    Also where the reader is then, and the status it has shown. With the result comes what
    the reader lacks of its text (never written as chunks, or replaced by it before it read
    them): a stream's chunks always add up to the result's text.
    """
    news = []
    if state.attempt > position.attempt:
        if position.seq > 0:  # it runs again: what this reader has is void
            news.append(
                LiveEvent(EventKind.RESET, converter.unstructure(RestartEvent(attempt=state.attempt)))
            )
        position = EventPosition(state.attempt)
    if state.result is None and state.status is not shown:
        shown = state.status
        current = ExecutionState(
            execution_id=execution_id,
            status=state.status,
            language=state.language,
            session_id=state.session_id,
        )
        news.append(LiveEvent(EventKind.STATUS, converter.unstructure(current)))
    chunks = list(state.chunks)
    if state.result is not None:
        seq = position.seq
        for stream, text, known in (
            (OutputStream.STDOUT, state.result.stdout, position.stdout),
            (OutputStream.STDERR, state.result.stderr, position.stderr),
        ):
            for piece in _pieces(text[known:]):
                seq += 1
                chunks.append(OutputChunk(state.attempt, seq, stream, piece))
    for chunk in chunks:
        position = position.after(chunk.stream, chunk.seq, chunk.text)
        output = converter.unstructure(OutputEvent(seq=chunk.seq, data=chunk.text))
        news.append(LiveEvent(EventKind(chunk.stream.value), output, str(position)))
    if state.result is not None:
        news.append(LiveEvent(EventKind.RESULT, converter.unstructure(state.result)))
    return news, position, shown
