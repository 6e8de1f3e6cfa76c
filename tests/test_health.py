"""The gRPC health service, driven by a grpcio client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from aiohttp.test_utils import TestServer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import health_port_of

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
async def health_stub(server: TestServer) -> AsyncIterator[health_pb2_grpc.HealthStub]:
    """A Health client for the test server's health port."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{health_port_of(server.app)}")
    yield health_pb2_grpc.HealthStub(channel)
    await channel.close(grace=None)


async def check(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    """The status Check reports for ``service``."""
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


@pytest.mark.parametrize(
    "service",
    ["", "sandboxd.v1.Executor", "sandboxd.runtime.python", "sandboxd.runtime.go", "sandboxd.runtime.ruby"],
)
async def test_serving(health_stub: health_pb2_grpc.HealthStub, service: str) -> None:
    """With containerd up and runtimes built, the server, the executor and each runtime are SERVING."""
    assert await check(health_stub, service) == SERVING


async def test_unknown_service_is_not_found(health_stub: health_pb2_grpc.HealthStub) -> None:
    """Check of a service that does not exist fails with NOT_FOUND."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(health_stub, "sandboxd.runtime.cobol")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_sends_the_current_status(health_stub: health_pb2_grpc.HealthStub) -> None:
    """Watch answers at once with the current status."""
    stream = health_stub.Watch(health_pb2.HealthCheckRequest(service="sandboxd.v1.Executor"))
    first = await stream.read()
    stream.cancel()
    assert first.status == SERVING
