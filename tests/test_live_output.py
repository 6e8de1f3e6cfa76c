"""Live output: GET /api/v1/executions/{id}/events streams output as it is produced, then the result.

Programs that must still run while the test looks wait at a gate: a file the test creates
in their workspace once it has seen what it waits for. What is asserted is the order of
events, never how long they took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

from sandboxd.api.auth import generate_key, hash_key
from sandboxd.api.openapi import SPEC_URL
from sandboxd.api.state import SUPERVISOR
from sandboxd.config import ApiKey, Config, ServerConfig, StoreConfig
from sandboxd.models import ExecutionRequest, ExecutionResult, ExecutionStatus, Kind, OutputStream
from sandboxd.service.live import EventKind, EventPosition, LiveEvent, LiveFeeds, OutputRelay
from sandboxd.service.store import OUTPUT_CHANNEL, ExecutionStore, OutputChunk, make_store
from tests.daemons import Daemon
from tests.helpers import (
    Client,
    Http,
    engine_of,
    execute,
    execution,
    metrics,
    submit,
    wait_for,
    wait_started,
)
from tests.postgres import suite_on_postgres

pytestmark = pytest.mark.integration

# A program calls gate(name) to wait until the test lets it through (see open_gate).
GATE = (
    "import os, sys, time\n"
    "def gate(name):\n"
    "    open('/workspace/' + name + '.waiting', 'w').close()\n"
    "    while not os.path.exists('/workspace/' + name):\n"
    "        time.sleep(0.02)\n"
)
REQUEST = ExecutionRequest(code="print(1)", language="python")


def gated(body: str) -> tuple[str, list[str]]:
    """A Python program of ``body`` whose ``gate(N)`` calls wait at gates of unique names; those names."""
    names = [f"gate-{uuid.uuid4().hex[:12]}" for _ in range(body.count("gate(N)"))]
    for name in names:
        body = body.replace("gate(N)", f"gate({name!r})", 1)
    return GATE + body, names


async def open_gate(state: Path, name: str) -> None:
    """Wait until a program of the daemon with this state directory waits at gate ``name``; let it go on."""
    (sandbox,) = await wait_started(state, f"{name}.waiting")
    await asyncio.to_thread((state / "workspaces" / sandbox / name).touch)


@attrs.frozen
class Sse:
    """One event as the client parses it: its name (``:`` for a comment), its data and its id."""

    kind: str
    data: str
    event_id: str | None = None

    def json(self) -> Any:
        """The event's data, parsed."""
        return json.loads(self.data)


class SseReader:
    """Reads a text/event-stream response event by event, lines of any length (a result may be megabytes)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._buffer = b""

    async def line(self) -> str | None:
        """The next line, without its end; None when the stream ended."""
        while b"\n" not in self._buffer:
            more = await self.response.content.readany()
            if not more:
                return None
            self._buffer += more
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode().removesuffix("\r")

    async def event(self) -> Sse | None:
        """The next event or comment; None when the stream ended."""
        kind, data, event_id = "message", list[str](), None
        while (line := await self.line()) is not None:
            if not line:
                if data:
                    return Sse(kind, "\n".join(data), event_id)
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if not name:
                return Sse(":", value)
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
        return None


async def read_until(reader: SseReader, done: Callable[[list[Sse]], bool]) -> list[Sse]:
    """Events (comments left out) until ``done`` holds for those read; the stream must not end before."""
    read: list[Sse] = []
    while not done(read):
        event = await reader.event()
        assert event is not None, f"the stream ended after {read}"
        if event.kind != ":":
            read.append(event)
    return read


async def read_to_end(reader: SseReader) -> list[Sse]:
    """Every event (comments left out) until the stream ends."""
    read = []
    while (event := await reader.event()) is not None:
        if event.kind != ":":
            read.append(event)
    return read


def text(events: list[Sse], stream: str = "stdout") -> str:
    """What the events of ``stream`` carried, in order."""
    return "".join(event.json()["data"] for event in events if event.kind == stream)


def printed(wanted: str, stream: str = "stdout") -> Callable[[list[Sse]], bool]:
    """Whether the events read so far carried ``wanted`` on ``stream``."""
    return lambda events: wanted in text(events, stream)


def state_of(http: Client) -> Path:
    """The state directory of an in-process server (its sandboxes' workspaces are under it)."""
    return engine_of(http.app).host.workspaces.parent


def events_path(execution_id: str) -> str:
    """The event stream's route for an execution."""
    return f"/api/v1/executions/{execution_id}/events"


@contextlib.asynccontextmanager
async def events_of(http: Http, execution_id: str, headers: dict[str, str]) -> AsyncIterator[SseReader]:
    """The execution's event stream (it must answer 200 with events), read event by event."""
    async with http.get(events_path(execution_id), headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        yield SseReader(response)


def assert_ordered(events: list[Sse], attempt: int = 1, resumed: str | None = None) -> None:
    """Output events have increasing seqs and ids saying where they leave a reader; the result comes last.

    The text of each stream is the result's, after what the event ``resumed`` from had.
    """
    output = [event for event in events if event.kind in ("stdout", "stderr")]
    seqs = [event.json()["seq"] for event in output]
    assert seqs == sorted(set(seqs)), seqs
    start = [int(n) for n in resumed.split("-")[2:]] if resumed else [0, 0]
    counts = dict(zip(("stdout", "stderr"), start, strict=True))
    for event in output:
        counts[event.kind] += len(event.json()["data"])
        assert event.event_id == f"{attempt}-{event.json()['seq']}-{counts['stdout']}-{counts['stderr']}"
    assert events[-1].kind == "result"
    assert all(event.kind != "result" for event in events[:-1])
    result = events[-1].json()
    assert text(events) == result["stdout"][start[0] :]
    assert text(events, "stderr") == result["stderr"][start[1] :]


# -- against the in-process server ------------------------------------------------------


async def test_output_arrives_while_the_program_runs(
    http: Client, headers: dict[str, str], config: Config
) -> None:
    """The first line arrives while the program waits to print its second; then the second, the result."""
    code, (gate,) = gated("print('first')\ngate(N)\nprint('second')\n")
    execution_id = await submit(http, headers, code=code, language="python", timeout=60)
    async with events_of(http, execution_id, headers) as stream:
        assert stream.response.headers["Cache-Control"] == "no-cache"
        assert "X-RateLimit-Remaining" in stream.response.headers
        before = await read_until(stream, printed("first\n"))
        assert before[0].kind == "status"
        assert before[0].json()["execution_id"] == execution_id
        # The program cannot end before the gate opens: this line came while it ran.
        await open_gate(config.paths.state, gate)
        after = await read_to_end(stream)
    events = before + after
    assert_ordered(events)
    assert text(events) == "first\nsecond\n"
    assert events[-1].json() == await execution(http, headers, execution_id)
    assert events[-1].json()["status"] == "completed"


async def test_a_late_client_first_gets_what_was_produced(
    http: Client, headers: dict[str, str], config: Config
) -> None:
    """A client connecting after the program printed gets that first; stderr too, decoded as in the result."""
    code, (gate,) = gated(
        "for n in range(3):\n    print(f'early {n}')\n"
        "sys.stderr.buffer.write(b'bad \\xff \\xe2\\x82\\xac\\n')\nsys.stderr.flush()\n"
        "gate(N)\nprint('late')\n"
    )
    execution_id = await submit(http, headers, code=code, language="python", timeout=60)
    await wait_started(config.paths.state, f"{gate}.waiting")  # it has printed: it waits at the gate
    async with events_of(http, execution_id, headers) as stream:
        early = await read_until(stream, printed("\n", "stderr"))
        assert text(early) == "early 0\nearly 1\nearly 2\n"
        assert [event.kind for event in early if event.kind != "status"][-1] == "stderr"
        await open_gate(config.paths.state, gate)
        events = early + await read_to_end(stream)
    assert_ordered(events)
    result = events[-1].json()
    assert text(events) == result["stdout"] == "early 0\nearly 1\nearly 2\nlate\n"
    assert text(events, "stderr") == result["stderr"] == "bad \ufffd \u20ac\n"


async def test_a_finished_execution_answers_with_its_result_at_once(
    http: Client, headers: dict[str, str]
) -> None:
    """A finished execution's stream (synchronous or asynchronous) is its output, then its result as GET."""
    status, synchronous = await execute(http, headers, code="print('sync')", language="python")
    assert status == 200
    asynchronous = await submit(http, headers, code="print('async')", language="python")
    await wait_for(http, headers, asynchronous, "completed")
    for execution_id, attempt in ((synchronous["execution_id"], 0), (asynchronous, 1)):
        async with events_of(http, execution_id, headers) as stream:
            events = await read_to_end(stream)
        assert [event.kind for event in events] == ["stdout", "result"]
        assert_ordered(events, attempt)
        assert events[-1].json() == await execution(http, headers, execution_id)
    assert text(events) == "async\n"


async def test_the_output_limit_holds_for_the_stream(
    http: Client, headers: dict[str, str], config: Config
) -> None:
    """A program writes its limit, then floods: the stream carries exactly the limit, then output_limit."""
    limit = config.limits.output_bytes
    code, (gate,) = gated(
        f"sys.stdout.write('x' * {limit - 1} + '\\n')\nsys.stdout.flush()\ngate(N)\n"
        "while True:\n    sys.stdout.write('y' * 4095 + '\\n')\n"
    )
    execution_id = await submit(http, headers, code=code, language="python", timeout=60)
    async with events_of(http, execution_id, headers) as stream:
        full = await read_until(stream, lambda events: len(text(events)) >= limit)
        await open_gate(config.paths.state, gate)
        events = full + await read_to_end(stream)
    assert_ordered(events)
    assert text(full) == text(events) == "x" * (limit - 1) + "\n"  # nothing past the limit came
    result = events[-1].json()
    assert (result["status"], result["exit_code"]) == ("output_limit", -1)
    assert text(events, "stderr") == result["stderr"]
    assert "sandboxd: output limit of" in result["stderr"]


async def test_a_compile_step_does_not_stream(http: Client, headers: dict[str, str]) -> None:
    """A compiled program streams its own output, never the compiler's (a warning is no output of the run)."""
    code = '#warning "compiler talk"\n#include <stdio.h>\nint main(void) { puts("ran"); return 0; }\n'
    execution_id = await submit(http, headers, code=code, language="c")
    async with events_of(http, execution_id, headers) as stream:
        events = await read_to_end(stream)
    assert_ordered(events)
    result = events[-1].json()
    assert (result["status"], result["stdout"], result["stderr"]) == ("completed", "ran\n", "")
    assert [event.kind for event in events if event.kind in ("stdout", "stderr")] == ["stdout"]


async def test_unknown_ids_and_bad_positions_are_refused(http: Client, headers: dict[str, str]) -> None:
    """An unknown id is 404; a Last-Event-ID that is no event id is 400 naming the header."""
    unknown = str(uuid.uuid4())
    response = await http.get(events_path(unknown), headers=headers)
    assert response.status == 404
    assert await response.json() == {"detail": f"Execution not found: {unknown}"}
    execution_id = await submit(http, headers, code="print(1)", language="python")
    response = await http.get(events_path(execution_id), headers={**headers, "Last-Event-ID": "seven"})
    assert response.status == 400
    assert (await response.json())["detail"].startswith("Last-Event-ID: must be the id of an event")
    response = await http.get(events_path(execution_id))
    assert response.status == 401


async def test_last_event_id_resumes_after_that_event(
    http: Client, headers: dict[str, str], config: Config
) -> None:
    """A client that reconnects with Last-Event-ID gets what came after that event, and nothing before."""
    code, (first_gate, second_gate) = gated("print('one')\ngate(N)\nprint('two')\ngate(N)\nprint('three')\n")
    execution_id = await submit(http, headers, code=code, language="python", timeout=60)
    async with events_of(http, execution_id, headers) as stream:
        seen = await read_until(stream, printed("one\n"))
    last = [event.event_id for event in seen if event.event_id is not None][-1]
    await open_gate(config.paths.state, first_gate)
    await wait_started(config.paths.state, f"{second_gate}.waiting")  # it printed "two"
    resumed_headers = {**headers, "Last-Event-ID": last or ""}
    async with events_of(http, execution_id, resumed_headers) as stream:
        resumed = await read_until(stream, printed("two\n"))
        await open_gate(config.paths.state, second_gate)
        resumed += await read_to_end(stream)
    assert_ordered(resumed, resumed=last)
    assert text(resumed) == "two\nthree\n"
    assert resumed[-1].json()["stdout"] == "one\ntwo\nthree\n"


async def test_the_route_is_documented_as_an_event_stream(http: Client) -> None:
    """The OpenAPI document has the route: text/event-stream, the Last-Event-ID header, its errors."""
    document = await (await http.get(SPEC_URL)).json()
    operation = document["paths"]["/api/v1/executions/{execution_id}/events"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {"text/event-stream"}
    assert {"400", "401", "404", "503"} <= set(operation["responses"])
    header = next(p for p in operation["parameters"] if p["in"] == "header")
    assert header["name"] == "Last-Event-ID"
    assert re.fullmatch(header["schema"]["pattern"].strip("^$"), "1-3-120-0")


# -- servers of their own ---------------------------------------------------------------


@pytest.fixture
async def small_server(
    make_server: Callable[..., Awaitable[Client]],
) -> tuple[Client, dict[str, str], dict[str, str]]:
    """A server with two keys, room for one event stream, and a heartbeat every 0.2 s."""
    alice, bob = generate_key(), generate_key()
    keys = (ApiKey(name="alice", sha256=hash_key(alice)), ApiKey(name="bob", sha256=hash_key(bob)))
    client = await make_server(
        api_keys=keys, dev_keys=(), limits={"event_streams": 1}, server=ServerConfig(heartbeat_seconds=0.2)
    )
    json_body = {"Content-Type": "application/json"}
    return client, {**json_body, "X-API-Key": alice}, {**json_body, "X-API-Key": bob}


async def test_another_keys_execution_is_not_found(
    small_server: tuple[Client, dict[str, str], dict[str, str]],
) -> None:
    """Another key's execution has no stream for you: 404, as for GET."""
    http, alice, bob = small_server
    execution_id = await submit(http, alice, code="print('mine')", language="python")
    response = await http.get(events_path(execution_id), headers=bob)
    assert response.status == 404
    assert await response.json() == {"detail": f"Execution not found: {execution_id}"}
    async with events_of(http, execution_id, alice) as stream:
        events = await read_to_end(stream)
    assert events[-1].json()["stdout"] == "mine\n"


async def test_an_idle_stream_has_heartbeats_and_streams_are_bounded(
    small_server: tuple[Client, dict[str, str], dict[str, str]],
) -> None:
    """A stream with nothing to say sends comments; past the host's limit of streams, 503 says so."""
    http, alice, _ = small_server
    state = state_of(http)
    code, (gate,) = gated("gate(N)\nprint('done')\n")
    execution_id = await submit(http, alice, code=code, language="python", timeout=60)
    async with events_of(http, execution_id, alice) as stream:
        await wait_started(state, f"{gate}.waiting")
        comments = 0
        while comments < 2:
            event = await stream.event()
            assert event is not None
            comments += event.kind == ":"
        second = await http.get(events_path(execution_id), headers=alice)
        assert second.status == 503
        assert await second.json() == {
            "detail": "Too many open event streams: at most 1 on this host; retry later"
        }
        assert second.headers["Retry-After"] == "5"
        assert (await metrics(http))["sandboxd_event_streams"] == 1
        await open_gate(state, gate)
        events = await read_to_end(stream)
    assert text(events) == "done\n"
    async with events_of(http, execution_id, alice) as stream:  # the slot is free again
        assert [event.kind for event in await read_to_end(stream)] == ["stdout", "result"]


async def test_the_relay_is_restarted_after_an_unexpected_failure(
    make_server: Callable[..., Awaitable[Client]], headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay's write fails unexpectedly: the supervisor restarts it, and it writes what waited."""
    failed: list[str] = []
    append = ExecutionStore.append_output

    async def fail_once(store: ExecutionStore, chunks: Sequence[tuple[str, OutputChunk]]) -> None:
        if not failed:
            failed.append(chunks[0][1].text)
            raise RuntimeError("injected failure of append_output")
        await append(store, chunks)

    monkeypatch.setattr(ExecutionStore, "append_output", fail_once)
    http = await make_server()
    code, (gate,) = gated("print('before')\ngate(N)\nprint('after')\n")
    execution_id = await submit(http, headers, code=code, language="python", timeout=60)
    async with events_of(http, execution_id, headers) as stream:
        # "before" is written only by the restarted relay: the program waits at its gate until then.
        before = await read_until(stream, printed("before\n"))
        assert failed == ["before\n"]
        assert http.app[SUPERVISOR].restarts("output relay") == 1
        await open_gate(state_of(http), gate)
        events = before + await read_to_end(stream)
    assert_ordered(events)
    assert text(events) == "before\nafter\n"


# -- daemons ----------------------------------------------------------------------------


async def test_a_stream_from_the_host_that_does_not_run_it(
    postgres_url: str, make_daemon: Callable[[int], Daemon]
) -> None:
    """Two hosts on one PostgreSQL: a client of the other host follows the output as it is produced."""
    runner, other = make_daemon(1), make_daemon(1)
    for daemon in (runner, other):
        daemon.environment = {"SANDBOXD_STORE_URL": postgres_url, "SANDBOXD_STORE_POLL_SECONDS": "1"}
    code, (gate,) = gated("print('first')\ngate(N)\nprint('second')\n")
    await runner.start()
    async with runner.session() as at_runner, other.session() as at_other:
        execution_id = await submit(at_runner, runner.headers, code=code, language="python", timeout=60)
        await wait_for(at_runner, runner.headers, execution_id, "running")  # the runner took it: it was alone
        await other.start()
        async with events_of(at_other, execution_id, runner.headers) as stream:
            before = await read_until(stream, printed("first\n"))
            await open_gate(runner.config.paths.state, gate)
            events = before + await read_to_end(stream)
    assert_ordered(events)
    assert text(events) == "first\nsecond\n"
    assert events[-1].json()["status"] == "completed"


async def test_streams_end_when_the_daemon_stops(make_daemon: Callable[[int], Daemon]) -> None:
    """At SIGTERM a stream of a queued execution ends at once; one of a running execution gets its result."""
    daemon = make_daemon(1)
    daemon.environment = {"SANDBOXD_SERVER_SHUTDOWN_GRACE": "60"}
    await daemon.start()
    assert daemon.process is not None
    code, (gate,) = gated("print('first')\ngate(N)\nprint('second')\n")
    async with daemon.session() as http:
        running = await submit(http, daemon.headers, code=code, language="python", timeout=60)
        await wait_for(http, daemon.headers, running, "running")
        queued = await submit(http, daemon.headers, code="print('later')", language="python")
        async with (
            events_of(http, running, daemon.headers) as following,
            events_of(http, queued, daemon.headers) as waiting,
        ):
            before = await read_until(following, printed("first\n"))
            assert [event.kind for event in await read_until(waiting, bool)] == ["status"]
            daemon.process.send_signal(signal.SIGTERM)
            assert await read_to_end(waiting) == []  # it ends without a result: it runs after the restart
            await open_gate(daemon.config.paths.state, gate)
            events = before + await read_to_end(following)
        assert text(events) == "first\nsecond\n"
        assert events[-1].json()["status"] == "completed"
        assert await asyncio.wait_for(daemon.process.wait(), 60) == 0


# -- the relay and the readers, on the store alone ----------------------------------------


@pytest.fixture
async def store(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[ExecutionStore]:
    """An open store of this test's own, of the suite's kind (SQLite, or PostgreSQL if the suite uses it)."""
    url = request.getfixturevalue("postgres_url") if suite_on_postgres() else f"sqlite://{tmp_path / 'db'}"
    opened = make_store(Config(store=StoreConfig(url=url)), "host-a")
    await opened.open()
    yield opened
    await opened.close()


def result_of(execution_id: str, stdout: str, stderr: str) -> ExecutionResult:
    """A completed result for ``execution_id`` with this output."""
    return ExecutionResult(
        execution_id=execution_id, stdout=stdout, stderr=stderr, exit_code=0, execution_time=0.1,
        language="python", session_id=None, status=ExecutionStatus.COMPLETED,
    )  # fmt: skip


async def running(store: ExecutionStore, execution_id: str) -> int:
    """Queue an asynchronous execution of alice's and start its run; the run's number."""
    await store.insert(execution_id, "alice", Kind.ASYNC, REQUEST, "python", ExecutionStatus.QUEUED)
    return await store.start_attempt(execution_id)


async def test_the_relay_coalesces_and_decodes_once(store: ExecutionStore) -> None:
    """Writes of one stream coalesce into one chunk; split characters are joined, bad bytes replaced."""
    relay = OutputRelay(store)
    attempt = await running(store, "a")
    async with relay.relaying("a", attempt) as hear:
        assert hear is not None
        for stream, data in (
            (OutputStream.STDOUT, b"x"), (OutputStream.STDOUT, b"\xe2\x82"), (OutputStream.STDOUT, b"\xac"),
            (OutputStream.STDERR, b"\xff!"), (OutputStream.STDOUT, b"\xf0\x9f"),
        ):  # fmt: skip
            hear(stream, data)
        assert await relay.flush()
        hear(OutputStream.STDOUT, b"\x98\x80")
        assert await relay.flush()
        live = await store.live("a", "alice", (0, 0), 10)
    assert live is not None
    assert [(c.seq, c.stream, c.text) for c in live.chunks] == [
        (1, OutputStream.STDOUT, "x\u20ac"),
        (2, OutputStream.STDERR, "\ufffd!"),
        (3, OutputStream.STDOUT, "\U0001f600"),
    ]  # fmt: skip
    assert (live.attempt, live.status) == (1, ExecutionStatus.RUNNING)


async def test_output_of_a_run_that_ended_before_a_flush_is_never_written(store: ExecutionStore) -> None:
    """A run that ends within the interval (a hello) costs no write: its result holds its output."""
    relay = OutputRelay(store)
    attempt = await running(store, "hello")
    async with relay.relaying("hello", attempt) as hear:
        assert hear is not None
        hear(OutputStream.STDOUT, b"hello\n")
    assert await relay.flush()
    async with store.transaction() as tx:
        assert await tx.fetch("SELECT COUNT(*) FROM execution_output") == [(0,)]


async def test_a_large_write_keeps_every_chunk(store: ExecutionStore) -> None:
    """Thousands of chunks written at once (several statements) are all there, in order, once."""
    attempt = await running(store, "big")
    chunks = [("big", OutputChunk(attempt, seq, OutputStream.STDOUT, f"{seq}\n")) for seq in range(1, 2501)]
    await store.append_output(chunks)
    await store.append_output(chunks[:10])  # a retry of rows written already changes nothing
    live = await store.live("big", "alice", (attempt, 2490), 100)
    assert live is not None
    assert [chunk.text for chunk in live.chunks] == [f"{seq}\n" for seq in range(2491, 2501)]
    async with store.transaction() as tx:
        assert await tx.fetch("SELECT COUNT(*) FROM execution_output") == [(2500,)]


async def follow_all(feeds: LiveFeeds, position: EventPosition) -> AsyncGenerator[LiveEvent | None]:
    """The events the feeds give for alice's execution "a" from ``position``."""
    async with feeds.follow("alice", "a", position) as events:
        assert events is not None
        async for event in events:
            yield event


async def test_readers_follow_runs_and_results(store: ExecutionStore) -> None:
    """Readers get status, chunks, heartbeats when idle, a reset for a new run, the rest with the result."""
    feeds = LiveFeeds(store, limit=4, poll=30, heartbeat=0.05, runs_here=lambda _: False)
    listening = asyncio.ensure_future(
        store.listen(lambda channel, payload: feeds.wake(payload) if channel == OUTPUT_CHANNEL else None)
    )
    relay = OutputRelay(store)
    try:
        async with relay.relaying("a", await running(store, "a")) as hear:
            assert hear is not None
            hear(OutputStream.STDOUT, b"one\n")
            assert await relay.flush()
        events = follow_all(feeds, EventPosition())
        first = [await anext(events), await anext(events)]
        assert [(e.kind, e.event_id) for e in first if e] == [
            (EventKind.STATUS, None), (EventKind.STDOUT, "1-1-4-0"),
        ]  # fmt: skip
        assert await anext(events) is None  # nothing new: a heartbeat
        async with relay.relaying("a", await store.start_attempt("a")) as hear:  # its host stopped: again
            assert hear is not None
            hear(OutputStream.STDERR, b"two\n")
            assert await relay.flush()
        later = [event async for event in _until_chunk(events)]
        assert [(e.kind, e.data, e.event_id) for e in later] == [
            (EventKind.RESET, {"attempt": 2}, None),
            (EventKind.STDERR, {"seq": 1, "data": "two\n"}, "2-1-0-4"),
        ]
        resumed = follow_all(feeds, EventPosition.parse("1-1-4-0"))
        assert (await anext(resumed) or LiveEvent(EventKind.STATUS, None)).kind is EventKind.RESET
        # Its last output was never written as a chunk: it comes with the result.
        await store.finish(result_of("a", "", "two\nthree\n"))
        rest = [(e.kind, e.data.get("data"), e.event_id) async for e in events if e is not None]
        assert rest == [(EventKind.STDERR, "three\n", "2-2-0-10"), (EventKind.RESULT, None, None)]
        assert feeds.open_streams == 1
        from_reset = [(e.kind, e.data.get("data")) async for e in resumed if e is not None]
        assert from_reset == [
            (EventKind.STATUS, None), (EventKind.STDERR, "two\n"), (EventKind.STDERR, "three\n"),
            (EventKind.RESULT, None),
        ]  # fmt: skip
        assert feeds.open_streams == 0
    finally:
        listening.cancel()


async def _until_chunk(events: AsyncIterator[LiveEvent | None]) -> AsyncIterator[LiveEvent]:
    """The events (heartbeats left out) up to and including the next output chunk."""
    async for event in events:
        if event is None:
            continue
        yield event
        if event.kind in (EventKind.STDOUT, EventKind.STDERR):
            return
