"""Runtimes without an image, a full queue, and image builds that have nothing to do."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sandboxd.api.app import create_app
from sandboxd.config import Config
from sandboxd.containerd import ContainerdClient
from sandboxd.engine.engine import Engine, RuntimeUnavailableError
from sandboxd.images.build import ImageBuilder, image_build_dir
from sandboxd.images.inspect import inspect_image
from sandboxd.models import ExecutionRequest

pytestmark = pytest.mark.integration


async def test_runtime_without_image_is_unavailable(
    engine: Engine, containerd: ContainerdClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime whose image is not in containerd is listed as unavailable and refuses to run."""
    python = engine.runtimes.get("python")
    assert python is not None
    missing = attrs.evolve(python, image="sandboxd.local/runtimes/missing:none")
    state = await inspect_image(containerd, missing)
    assert not state.available
    assert state.reason is not None
    assert "sandboxd images build python" in state.reason
    plan = engine.plan(ExecutionRequest(code="print(1)", language="python"))
    # As an inspection after the image was removed would leave it.
    monkeypatch.setitem(engine._images, "python", state)
    with pytest.raises(RuntimeUnavailableError, match="Runtime python is not available"):
        await engine.execute(plan, str(uuid.uuid4()))
    assert not {info.language: info for info in engine.languages()}["python"].available


async def test_current_image_is_not_rebuilt(
    engine: Engine, containerd: ContainerdClient, config: Config
) -> None:
    """`images build` skips an image built from the current recipe, and says so."""
    python = engine.runtimes.get("python")
    assert python is not None
    said: list[str] = []
    builder = ImageBuilder(containerd, image_build_dir(config), said.append)
    state = await builder.build(python)
    assert state.available
    assert state.version is not None
    assert state.version.startswith("Python 3.")
    assert said == [f"[python] {python.image} is current ({state.version}); skipped"]


@pytest.fixture
async def one_slot_server(
    separate_daemon: Callable[[], Config], api_key: str
) -> AsyncIterator[TestClient[Any, Any]]:
    """A second server allowing one execution at a time and one waiting."""
    config = separate_daemon()
    small = attrs.evolve(
        config, dev_keys=(api_key,), limits=attrs.evolve(config.limits, concurrency=1, queue=1)
    )
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(small), host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()


async def test_full_queue_is_503_with_retry_after(
    one_slot_server: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    """With every slot busy and the queue full, a request is turned away at once with 503."""
    body = json.dumps({"code": "import time; time.sleep(2)", "language": "python"})

    async def post() -> tuple[int, Any, str | None]:
        response = await one_slot_server.post("/api/v1/execute", data=body, headers=headers)
        return response.status, await response.json(), response.headers.get("Retry-After")

    running = asyncio.ensure_future(post())
    await asyncio.sleep(0.3)
    queued = asyncio.ensure_future(post())
    await asyncio.sleep(0.3)
    status, result, retry_after = await post()
    assert status == 503
    assert retry_after == "1"
    assert result["detail"].startswith("Server busy")
    assert [(await running)[0], (await queued)[0]] == [200, 200]
