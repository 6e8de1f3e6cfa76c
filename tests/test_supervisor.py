"""Supervision: background tasks that fail are logged and restarted, and the daemon serves on."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandboxd.api.state import ENGINE, HEALTH_PORT, SUPERVISOR
from sandboxd.config import StoreConfig
from sandboxd.containerd import UnavailableError, Version
from sandboxd.engine import engine as engine_module
from sandboxd.engine import orphans
from sandboxd.engine.engine import Engine
from sandboxd.engine.watch import ContainerdWatch
from sandboxd.ops.health import HealthReporter
from sandboxd.ops.notify import Notifier
from sandboxd.service.store import ExecutionStore
from sandboxd.service.store.sqlite import SqliteStore
from sandboxd.supervisor import Backoff, Supervisor
from tests.helpers import Client, engine_of, submit, wait_for

FAST = Backoff(first=0.01, most=0.05)


async def eventually(condition: Callable[[], bool], seconds: float = 30, what: str = "the condition") -> None:
    """Wait until ``condition()`` holds, checking every 20 ms; fail after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, f"{what} did not come true in time"
        await asyncio.sleep(0.02)


async def test_a_failing_loop_is_logged_restarted_and_reported_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected exception is logged with its traceback; the loop is down with its reason, then runs."""
    supervisor = Supervisor(Backoff(first=0.2, most=0.2))
    runs: list[int] = []
    release = asyncio.Event()

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise OSError("the disk is gone")
        await release.wait()
        await asyncio.Event().wait()

    caplog.set_level(logging.ERROR, logger="sandboxd.supervisor")
    handle = supervisor.start("probe", loop)
    await eventually(lambda: "probe" in supervisor.down)
    assert supervisor.down == {"probe": "OSError: the disk is gone"}
    (record,) = [r for r in caplog.records if "probe" in r.getMessage()]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], OSError)
    await eventually(lambda: len(runs) == 2)
    assert supervisor.down == {}
    assert supervisor.restarts("probe") == 1
    await handle.stop()
    assert handle.done


async def test_a_loop_that_returns_is_restarted_but_one_off_work_is_done() -> None:
    """A loop must run until stopped, so its return is a failure; work with forever=False just ends."""
    supervisor = Supervisor(FAST)
    loops: list[int] = []
    finished: list[str] = []

    async def returns() -> None:
        loops.append(1)

    looping = supervisor.start("loop", returns)
    await eventually(lambda: len(loops) >= 3)
    await looping.stop()

    async def once() -> None:
        finished.append("work")

    done = supervisor.start("once", once, forever=False, on_done=lambda: finished.append("done"))
    await done.wait()
    assert finished == ["work", "done"]
    assert supervisor.restarts("once") == 0


async def test_backoff_doubles_up_to_its_limit() -> None:
    """Each restart waits twice as long as the previous one, up to the limit."""
    backoff = Backoff(first=0.5, most=4.0)
    waits = [backoff.after(None)]
    for _ in range(5):
        waits.append(backoff.after(waits[-1]))
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


async def test_stop_cancels_a_pending_restart() -> None:
    """Stopping the supervisor ends every task, those waiting to be restarted too."""
    supervisor = Supervisor(Backoff(first=60, most=60))

    async def fails() -> None:
        raise RuntimeError("boom")

    handle = supervisor.start("fails", fails)
    await eventually(lambda: "fails" in supervisor.down)
    await supervisor.stop()
    assert handle.done
    assert supervisor.down == {}


class RecoveringContainerd:
    """A containerd that always answers (the outage is reported by hand)."""

    async def version(self, *, timeout: float) -> Version:
        """Answer."""
        return Version(version="1.6", revision="test")


async def test_an_oserror_in_recovery_restarts_the_watch_until_it_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recovery that raises OSError ends the watch's loop; supervised, the watch comes back and recovers."""
    monkeypatch.setattr("sandboxd.engine.watch.PING_INTERVAL", 0.01)
    attempts: list[int] = []

    async def recovery() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("umount: target is busy")

    watch = ContainerdWatch(RecoveringContainerd(), recovery)  # type: ignore[arg-type]
    watch.report(UnavailableError("Version", "connection refused"))
    supervisor = Supervisor(FAST)
    handle = supervisor.start("containerd watch", watch.run_forever)
    await eventually(lambda: watch.available)
    assert len(attempts) == 2
    assert supervisor.restarts("containerd watch") == 1
    await handle.stop()


class Flaky:
    """Wraps a callable: counted calls fail with an unexpected error while ``failing()`` says so.

    Only calls whose arguments ``counts`` accepts are counted. Set on a class, it wraps a method.
    """

    def __init__(
        self, original: Callable[..., Any], counts: Callable[..., bool] = lambda *_, **__: True
    ) -> None:
        self.original = original
        self.counts = counts
        self.failing: Callable[[], bool] = lambda: False
        self.calls = 0
        self.failures = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the original, or fail."""
        if self.counts(*args, **kwargs):
            self.calls += 1
            if self.failing():
                self.failures += 1
                raise RuntimeError(f"injected failure of {getattr(self.original, '__name__', self.original)}")
        return self.original(*args, **kwargs)

    def __get__(self, instance: object, owner: type) -> Callable[..., Any]:
        return functools.partial(self, instance)


@pytest.fixture
async def flaky_daemon(
    make_server: Callable[..., Awaitable[Client]], monkeypatch: pytest.MonkeyPatch
) -> tuple[Client, dict[str, Flaky]]:
    """A daemon of the test's own whose every background loop fails at a step it takes early and often.

    A step fails until this daemon's supervisor has restarted its loop (the shared test
    server's loops may fail meanwhile too, and are restarted by their own supervisor).
    """
    flaky = {
        "orphaned shim reaper": Flaky(orphans.reap_orphaned_shims),
        "retention purge": Flaky(ExecutionStore.purge),
        # Not the first publication: that is the health server's start, before the loop.
        "health": Flaky(HealthReporter.publish, counts=lambda reporter: bool(reporter._published)),
        "watchdog": Flaky(Notifier.send, counts=lambda _notifier, *fields: fields == ("WATCHDOG=1",)),
        "queue": Flaky(ExecutionStore.claim),
        "lease renewal": Flaky(ExecutionStore.renew),
        # Each store has a listener of its own (PostgreSQL's LISTEN, SQLite's in-process wake-up).
        "store listener": Flaky(SqliteStore.listen),
        "host heartbeat": Flaky(ExecutionStore.heartbeat),
        "image refresh": Flaky(Engine._refresh_unavailable),
    }
    supervisors: list[Supervisor] = []
    for name, injected in flaky.items():
        injected.failing = functools.partial(_not_yet_restarted, supervisors, name)
    monkeypatch.setattr(orphans, "reap_orphaned_shims", flaky["orphaned shim reaper"])
    monkeypatch.setattr(engine_module, "SHIM_REAP_INTERVAL", 0.05)
    monkeypatch.setattr(engine_module, "_IMAGE_REFRESH_INTERVAL", 0.05)
    monkeypatch.setattr(Engine, "_refresh_unavailable", flaky["image refresh"])
    for method, name in [
        ("purge", "retention purge"), ("claim", "queue"), ("renew", "lease renewal"),
        ("heartbeat", "host heartbeat"),
    ]:  # fmt: skip
        monkeypatch.setattr(ExecutionStore, method, flaky[name])
    monkeypatch.setattr(SqliteStore, "listen", flaky["store listener"])
    monkeypatch.setattr(HealthReporter, "publish", flaky["health"])
    monkeypatch.setattr(Notifier, "send", flaky["watchdog"])
    monkeypatch.setitem(os.environ, "WATCHDOG_USEC", "200000")
    http = await make_server(store=StoreConfig(lease_seconds=1.5, poll_seconds=0.2))
    supervisors.append(http.app[SUPERVISOR])
    return http, flaky


def _not_yet_restarted(supervisors: list[Supervisor], name: str) -> bool:
    """True until the daemon under test (once it exists) has restarted the loop ``name``."""
    return not supervisors or supervisors[0].restarts(name) == 0


def _restarted_and_ran(supervisor: Supervisor, name: str, injected: Flaky) -> bool:
    return supervisor.restarts(name) >= 1 and injected.calls > injected.failures


@pytest.mark.integration
async def test_every_background_loop_is_restarted_after_an_unexpected_exception(
    flaky_daemon: tuple[Client, dict[str, Flaky]], headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each background loop, and an async job, fails with an unexpected error, is restarted, runs again."""
    http, flaky = flaky_daemon
    app = http.app
    supervisor, engine = app[SUPERVISOR], engine_of(app)
    pool = engine._pool
    assert pool is not None
    flaky["sandbox pool"] = Flaky(pool._adjust)
    flaky["containerd watch"] = Flaky(engine.host.client.version)
    for name in ("sandbox pool", "containerd watch"):
        flaky[name].failing = functools.partial(_not_yet_restarted, [supervisor], name)
    monkeypatch.setattr(pool, "_adjust", flaky["sandbox pool"])
    monkeypatch.setattr(engine.host.client, "version", flaky["containerd watch"])
    for name, injected in flaky.items():
        await eventually(functools.partial(_restarted_and_ran, supervisor, name, injected), what=name)

    # An asynchronous execution whose job fails (the store refused a write) runs again and completes.
    store_write = Flaky(ExecutionStore.start_attempt)
    jobs: list[str] = []
    store_write.failing = lambda: not jobs or supervisor.restarts(f"execution {jobs[0]}") == 0
    monkeypatch.setattr(ExecutionStore, "start_attempt", store_write)
    execution_id = await submit(http, headers, code="print('supervised')", language="python")
    jobs.append(execution_id)
    await eventually(lambda: supervisor.restarts(f"execution {execution_id}") == 1)
    result = await wait_for(http, headers, execution_id)
    assert (result["status"], result["stdout"]) == ("completed", "supervised\n")


async def _health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(response.status)


async def _until_health(port: int, status: int) -> None:
    for _ in range(300):
        if await _health(port) == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health never became {status}")


@pytest.mark.integration
async def test_health_is_not_serving_while_a_task_is_down_and_the_daemon_recovers(
    http: Client,
    headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OSError in containerd recovery: NOT_SERVING while the watch is down, then serving again by itself."""
    app = http.app
    engine, supervisor = app[ENGINE], app[SUPERVISOR]
    failing = asyncio.Event()
    failing.set()
    original: Callable[..., Awaitable[int]] = engine_module.reconcile  # type: ignore[attr-defined]

    async def reconcile(*args: Any, **kwargs: Any) -> int:
        if failing.is_set():
            raise OSError("umount /run/sandboxd/workspaces/x: target is busy")
        return await original(*args, **kwargs)

    monkeypatch.setattr(engine_module, "reconcile", reconcile)
    caplog.set_level(logging.ERROR, logger="sandboxd.ops.health")
    engine._watch.report(UnavailableError("Version", "connection refused (simulated outage)"))
    try:
        await eventually(lambda: "containerd watch" in supervisor.down)
        assert supervisor.down["containerd watch"].startswith("OSError: umount")
        await _until_health(app[HEALTH_PORT], health_pb2.HealthCheckResponse.NOT_SERVING)
        reason = "NOT_SERVING while background task 'containerd watch' is down: OSError: umount"
        await eventually(lambda: reason in caplog.text)
        body = json.dumps({"code": "print(1)", "language": "python"})
        refused = await http.post("/api/v1/execute", data=body, headers=headers)
        assert refused.status == 503
    finally:
        failing.clear()
        # The next tests need the daemon back, whatever happened above.
        await eventually(lambda: engine.containerd_available, seconds=120)
    await _until_health(app[HEALTH_PORT], health_pb2.HealthCheckResponse.SERVING)
    body = json.dumps({"code": "print(2)", "language": "python"})
    served = await http.post("/api/v1/execute", data=body, headers=headers)
    assert served.status == 200
    assert (await served.json())["stdout"] == "2\n"
