"""containerd going away and coming back while the daemon runs."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandboxd.config import Config
from sandboxd.containerd import ContainerdClient
from sandboxd.engine.engine import Engine
from tests.helpers import SLACK, Client, assert_nothing_left, execute, health_port_of

pytestmark = pytest.mark.integration

PIDFILE_VARIABLE = "SANDBOXD_DEV_CONTAINERD_PIDFILE"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class PrivateContainerd:
    """The containerd `scripts/dev test` started, which this test may stop and start again."""

    def __init__(self, config: Config) -> None:
        pidfile = os.environ.get(PIDFILE_VARIABLE)
        if not pidfile:
            pytest.fail(f"{PIDFILE_VARIABLE} is not set: run the suite through `scripts/dev test`")
        self.pidfile = Path(pidfile)
        self.pid = int(self.pidfile.read_text())
        self.argv = [
            arg.decode() for arg in Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0") if arg
        ]
        assert Path(self.argv[0]).name == "containerd", f"{self.pidfile} names {self.argv}"
        self.log = self.pidfile.with_suffix(".outage-test.log")
        self.address = config.containerd.address

    def stop(self) -> None:
        """SIGTERM containerd and wait until it has exited."""
        os.kill(self.pid, signal.SIGTERM)
        for _ in range(200):
            if not Path(f"/proc/{self.pid}").exists():
                return
            time.sleep(0.05)
        raise AssertionError("containerd did not stop within 10 s")

    def start(self) -> None:
        """Start containerd again with the same command line, detached like scripts/dev starts it."""
        # Spawned detached, not as a child this test would have to wait for: scripts/dev stops it.
        self.pid = os.posix_spawnp(
            self.argv[0],
            self.argv,
            dict(os.environ),
            setsid=True,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(self.log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
        )
        self.pidfile.write_text(f"{self.pid}\n")


async def health_status(stub: health_pb2_grpc.HealthStub) -> int:
    """The executor's health status."""
    response = await stub.Check(health_pb2.HealthCheckRequest(service="sandboxd.v1.Executor"), timeout=2)
    return int(response.status)


async def within(seconds: float, stub: health_pb2_grpc.HealthStub, status: int) -> float:
    """Poll health until it reports ``status``; return how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if await health_status(stub) == status:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"health did not become {status} within {seconds} s")


async def test_containerd_outage(
    http: Client, headers: dict[str, str], engine: Engine, containerd: ContainerdClient, config: Config
) -> None:
    """In-flight work finishes (sandboxes run without containerd), new work gets 503, and all recovers."""
    private = PrivateContainerd(config)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{health_port_of(http.app)}")
    stub = health_pb2_grpc.HealthStub(channel)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="sandboxd.v1.Executor"))
    assert (await watch.read()).status == SERVING
    code = "import time\nprint('up', flush=True)\ntime.sleep(4)\nprint('done')"
    running = asyncio.ensure_future(execute(http, headers, code=code, language="python", timeout=40))
    await asyncio.sleep(1.5)  # a sandbox boots in well under a second: the program sleeps now
    await asyncio.to_thread(private.stop)
    stopped = time.monotonic()
    try:
        status, result = await asyncio.wait_for(running, 15)
        assert status == 200
        assert (result["status"], result["exit_code"], result["stdout"]) == ("completed", 0, "up\ndone\n")

        started = time.monotonic()
        status, body = await execute(http, headers, code="print('during the outage')", language="python")
        assert time.monotonic() - started < SLACK  # refused at once, not after a containerd timeout
        assert status == 503
        assert body["detail"].startswith("containerd is unavailable")
        assert (await http.get("/healthz")).status == 200
        await within(5 - (time.monotonic() - stopped), stub, NOT_SERVING)
        assert (await watch.read()).status == NOT_SERVING
    finally:
        await asyncio.to_thread(private.start)
    await within(5, stub, SERVING)
    assert (await watch.read()).status == SERVING
    watch.cancel()
    await channel.close(grace=None)

    deadline = time.monotonic() + 30
    while True:
        status, body = await execute(http, headers, code="print('containerd is back')", language="python")
        if status == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert (status, body["stdout"]) == (200, "containerd is back\n"), body
    await assert_nothing_left(engine, containerd, config)
