"""Two daemons sharing the tests' PostgreSQL and one containerd namespace: one service."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.daemons import Daemon, call, final_results

pytestmark = pytest.mark.integration

HostFactory = Callable[..., Daemon]
LEASE_SECONDS = "3"
SLEEP = "import time\ntime.sleep({seconds})\nprint('done {n}')"


@pytest.fixture
def make_host(postgres_url: str, make_daemon: Callable[[int], Daemon]) -> HostFactory:
    """Make daemons that share one schema of the tests' PostgreSQL, with short leases."""

    def make(concurrency: int, **environment: str) -> Daemon:
        daemon = make_daemon(concurrency)
        daemon.environment = {
            "SANDBOXD_STORE_URL": postgres_url,
            "SANDBOXD_STORE_LEASE_SECONDS": LEASE_SECONDS,
            "SANDBOXD_STORE_POLL_SECONDS": "1",
            **environment,
        }
        return daemon

    return make


async def submit(session: aiohttp.ClientSession, daemon: Daemon, code: str) -> str:
    """Submit one async Python execution to ``daemon``; return its id."""
    accepted = await call(
        session, daemon, "POST", "/api/v1/execute/async", {"code": code, "language": "python"}
    )
    return str(accepted["execution_id"])


async def metric(session: aiohttp.ClientSession, daemon: Daemon, prefix: str) -> float:
    """The sum of ``daemon``'s metric samples whose line starts with ``prefix``."""
    async with session.get(f"{daemon.url}/metrics") as response:
        text = await response.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


async def executions_run(session: aiohttp.ClientSession, daemon: Daemon) -> float:
    """How many executions ``daemon`` itself ran, from its metrics."""
    return await metric(session, daemon, "sandboxd_executions_total{")


async def wait_for_status(
    session: aiohttp.ClientSession, daemon: Daemon, execution_id: str, status: str, seconds: float = 60
) -> None:
    """Poll until the execution has ``status`` (or fail after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (await call(session, daemon, "GET", f"/api/v1/executions/{execution_id}"))["status"] == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{execution_id} never became {status}")


async def health(daemon: Daemon) -> int:
    """The daemon's overall gRPC health status (its port is in its log)."""
    found = re.search(r"gRPC health service on 127\.0\.0\.1:(\d+)", daemon.log.read_text())
    assert found, "the daemon did not log its health port"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{found[1]}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(response.status)


async def eventually_health(daemon: Daemon, status: int, seconds: float = 30) -> None:
    """Wait until the daemon's health is ``status``."""
    deadline = time.monotonic() + seconds
    while await health(daemon) != status:
        assert time.monotonic() < deadline, f"health never became {status}"
        await asyncio.sleep(0.2)


async def test_work_queued_at_one_host_spreads_to_the_other(make_host: HostFactory) -> None:
    """Async work submitted to one host with one slot is run by both hosts; either host reads the results."""
    first, second = make_host(1), make_host(1)
    await asyncio.gather(first.start(), second.start())
    async with aiohttp.ClientSession() as session:
        ids = [await submit(session, first, SLEEP.format(seconds=1, n=n)) for n in range(4)]
        results = await final_results(session, second, ids)
        assert [results[i]["stdout"] for i in ids] == [f"done {n}\n" for n in range(4)]
        assert await executions_run(session, second) >= 1, "the idle host took none of the work"
        assert await executions_run(session, first) >= 1
    hosts = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandboxd", "--config", str(first.config_path), "hosts",
        env={**os.environ, **first.environment}, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    listing = (await hosts.communicate())[0].decode()
    assert await hosts.wait() == 0
    lines = listing.splitlines()[1:]
    assert len(lines) == 2, listing
    assert all("(gone)" not in line and "python" in line for line in lines), listing


async def test_kill_9_of_a_host_with_claimed_work(make_host: HostFactory) -> None:
    """A host killed with claimed work: once its leases expire the other host finishes all of it, same ids."""
    doomed, survivor = make_host(2), make_host(2)
    await doomed.start()
    async with aiohttp.ClientSession() as session:
        ids = [await submit(session, doomed, SLEEP.format(seconds=3, n=n)) for n in range(4)]
        await wait_for_status(session, doomed, ids[0], "running")
        await doomed.stop(signal.SIGKILL)
        await survivor.start()
        results = await final_results(session, survivor, ids)
        assert [results[i]["status"] for i in ids] == ["completed"] * 4
        assert [results[i]["stdout"] for i in ids] == [f"done {n}\n" for n in range(4)]
        assert await executions_run(session, survivor) == 4
        # The killed host comes back: it removes the sandboxes it left, and finds nothing to run.
        await doomed.start()
        listing = await call(session, doomed, "GET", f"/api/v1/executions/{ids[0]}")
        assert listing["status"] == "completed"


async def long_running(session: aiohttp.ClientSession, daemon: Daemon) -> str:
    """Start ``daemon``, submit a minute's sleep to it and wait until it runs there; return its id."""
    await daemon.start()
    execution_id = await submit(session, daemon, "import time; time.sleep(60)")
    await wait_for_status(session, daemon, execution_id, "running")
    return execution_id


async def test_cancel_from_another_host(make_host: HostFactory) -> None:
    """DELETE at one host of an execution running on the other cancels it there within seconds."""
    owner, other = make_host(1), make_host(1)
    async with aiohttp.ClientSession() as session:
        execution_id = await long_running(session, owner)
        await other.start()
        asked = time.monotonic()
        cancelled = await call(session, other, "DELETE", f"/api/v1/executions/{execution_id}")
        took = time.monotonic() - asked
        assert (cancelled["status"], cancelled["exit_code"], cancelled["stdout"]) == ("cancelled", -1, "")
        assert "cancelled at the client's request" in cancelled["stderr"]
        assert took < 15, f"the cross-host cancel took {took:.1f} s"
        again = await call(session, owner, "GET", f"/api/v1/executions/{execution_id}")
        assert again == cancelled


async def test_cancel_of_an_execution_whose_host_died(make_host: HostFactory) -> None:
    """DELETE of an execution held by a killed host cancels it once its lease expires; it never runs again."""
    doomed, other = make_host(1), make_host(1)
    async with aiohttp.ClientSession() as session:
        execution_id = await long_running(session, doomed)
        await doomed.stop(signal.SIGKILL)
        await other.start()
        cancelled = await call(session, other, "DELETE", f"/api/v1/executions/{execution_id}")
        assert (cancelled["status"], cancelled["exit_code"]) == ("cancelled", -1)
        await asyncio.sleep(float(LEASE_SECONDS) * 2)
        assert await executions_run(session, other) == 0
        await doomed.start()  # it removes the sandbox it left behind
        again = await call(session, doomed, "GET", f"/api/v1/executions/{execution_id}")
        assert again == cancelled


async def test_one_rate_limit_across_hosts(make_host: HostFactory) -> None:
    """Five a minute is five across both hosts: the sixth request, at either host, gets 429."""
    first, second = make_host(1, SANDBOXD_LIMITS_RATE_LIMIT="5"), make_host(1, SANDBOXD_LIMITS_RATE_LIMIT="5")
    await asyncio.gather(first.start(), second.start())
    body = '{"code": "print(1)", "language": "python"}'
    headers = {"X-API-Key": first.key, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        remaining = []
        for daemon in (first, second, first, second, first):
            async with session.post(
                f"{daemon.url}/api/v1/execute/async", data=body, headers=headers
            ) as response:
                assert response.status == 202
                remaining.append(int(response.headers["X-RateLimit-Remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        for daemon in (first, second):
            async with session.post(
                f"{daemon.url}/api/v1/execute/async", data=body, headers=headers
            ) as response:
                assert response.status == 429
                assert await response.json() == {"detail": "Rate limit exceeded"}
                assert int(response.headers["Retry-After"]) >= 1


def _pg_ctl_for(data: str) -> str:
    """The pg_ctl of the release that made the cluster in ``data`` (PostgreSQL 15 on Debian 12, 17 on 13)."""
    release = (Path(data) / "PG_VERSION").read_text().strip()
    return f"/usr/lib/postgresql/{release}/bin/pg_ctl"


async def pg_ctl(data: str, action: str) -> None:
    """Stop or start the tests' PostgreSQL cluster, as its owner (start: with the options it had)."""
    process = await asyncio.create_subprocess_exec(
        "runuser", "-u", "postgres", "--", _pg_ctl_for(data),
        "-D", data, "-m", "fast", "-w", "-l", f"{data}/server.log", action,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    assert await process.wait() == 0, f"pg_ctl {action} failed"


async def test_postgres_restart_during_load_loses_nothing(make_host: HostFactory) -> None:
    """A PostgreSQL restart under load: no accepted execution is lost, and no 5xx but the store's 503."""
    data = os.environ.get("SANDBOXD_DEV_POSTGRES_DATA")
    if not data:
        pytest.skip("SANDBOXD_DEV_POSTGRES_DATA is not set: `scripts/dev test` names the private cluster")
    first, second = make_host(2), make_host(2)
    await asyncio.gather(first.start(), second.start())
    accepted: list[tuple[Daemon, str]] = []
    synchronous: list[dict[str, Any]] = []
    refusals: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def load(session: aiohttp.ClientSession, daemon: Daemon, n: int) -> None:
        headers = {"X-API-Key": daemon.key, "Content-Type": "application/json"}
        while not stop.is_set():
            n += 1
            body = {"code": f"print({n})", "language": "python"}
            route = "/api/v1/execute" if n % 3 == 0 else "/api/v1/execute/async"
            async with session.post(f"{daemon.url}{route}", json=body, headers=headers) as response:
                answer = await response.json()
                if response.status == 202:
                    accepted.append((daemon, answer["execution_id"]))
                elif response.status == 200:
                    synchronous.append(answer)
                else:
                    refusals.append((response.status, answer["detail"]))
                    await asyncio.sleep(0.2)
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession() as session:
        loads = [
            asyncio.ensure_future(load(session, daemon, n * 1000)) for n, daemon in enumerate((first, second))
        ]
        try:
            await asyncio.sleep(3)
            # A restart with an outage in the middle: stopped, down for a few seconds, started again.
            await pg_ctl(data, "stop")
            try:
                await asyncio.sleep(3)
                assert await health(first) == health_pb2.HealthCheckResponse.NOT_SERVING
                assert await metric(session, first, "sandboxd_store_available") == 0
                await asyncio.sleep(5)
            finally:
                await pg_ctl(data, "start")
            await eventually_health(first, health_pb2.HealthCheckResponse.SERVING)
            await eventually_health(second, health_pb2.HealthCheckResponse.SERVING)
            assert await metric(session, first, "sandboxd_store_available") == 1
            await asyncio.sleep(2)
        finally:
            stop.set()
            await asyncio.gather(*loads)
        assert all(status == 503 and "store is unavailable" in detail for status, detail in refusals), (
            refusals
        )
        assert accepted, "no asynchronous execution was accepted"
        results = await final_results(session, first, [execution_id for _, execution_id in accepted])
        assert len(results) == len(accepted), "an accepted execution was lost"
        assert {result["status"] for result in results.values()} == {"completed"}
        # Every synchronous result returned was recorded, those finished during the outage included.
        for answer in synchronous:
            for _ in range(100):
                record = await call(session, second, "GET", f"/api/v1/executions/{answer['execution_id']}")
                if record.get("status") == "completed":
                    break
                await asyncio.sleep(0.2)
            assert record == answer
