"""The standard gRPC health service (grpc.health.v1.Health) for ops tooling and probes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sandboxd.engine.engine import Engine
from sandboxd.supervisor import Supervisor

log = logging.getLogger(__name__)

EXECUTOR_SERVICE: Final = "sandboxd.v1.Executor"
RUNTIME_SERVICE_PREFIX: Final = "sandboxd.runtime."
PUBLISH_INTERVAL: Final = 1.0

SERVING: Final = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    """Publishes the daemon's state as health statuses; Watch streams see every change."""

    def __init__(
        self, engine: Engine, supervisor: Supervisor, store_available: Callable[[], bool] = lambda: True
    ) -> None:
        self._engine = engine
        self._supervisor = supervisor
        self._store_available = store_available
        # health.aio is the package's public asyncio servicer; its type stubs do not list it.
        self.servicer: health_pb2_grpc.HealthServicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._published: dict[str, int] = {}
        self._down_reported: dict[str, str] = {}

    def statuses(self) -> dict[str, int]:
        """The status of every service: the whole server, the executor, and each runtime.

        The server is NOT_SERVING while no runtime can run, while the execution store cannot be
        reached, and while a background task is down (it failed and waits to be restarted).
        """
        up = self._engine.containerd_available
        runtimes = {
            f"{RUNTIME_SERVICE_PREFIX}{info.runtime}": SERVING if up and info.available else NOT_SERVING
            for info in self._engine.languages()
        }
        down = self._supervisor.down
        serving = SERVING in runtimes.values() and not down and self._store_available()
        overall = SERVING if serving else NOT_SERVING
        return {"": overall, EXECUTOR_SERVICE: overall, **runtimes}

    def _report_down(self) -> None:
        """Log, once per failure, why the server is NOT_SERVING because of a background task."""
        down = self._supervisor.down
        for name, reason in down.items():
            if self._down_reported.get(name) != reason:
                log.error("health: NOT_SERVING while background task %r is down: %s", name, reason)
        self._down_reported = dict(down)

    async def publish(self) -> None:
        """Set the statuses that changed since the last publication."""
        self._report_down()
        for service, status in self.statuses().items():
            if self._published.get(service) != status:
                await self.servicer.set(service, status)
                self._published[service] = status

    async def publish_forever(self) -> None:
        """Publish every second (containerd's watch notices an outage within about a second)."""
        while True:
            await self.publish()
            await asyncio.sleep(PUBLISH_INTERVAL)


async def start_server(reporter: HealthReporter, address: str) -> tuple[grpc.aio.Server, int]:
    """Serve the health service on ``address`` (host:port; port 0 picks one); return the server and port."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(reporter.servicer, server)
    port = server.add_insecure_port(address)
    await reporter.publish()
    await server.start()
    return server, port
