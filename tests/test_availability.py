"""Runtimes without an image, a full queue, and image builds that have nothing to do."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable

import attrs
import pytest

from sandboxd.config import Config
from sandboxd.containerd import ContainerdClient
from sandboxd.engine.engine import Engine, RuntimeUnavailableError
from sandboxd.images.build import ImageBuilder, image_build_dir
from sandboxd.images.inspect import inspect_image
from sandboxd.images.progress import BuildProgress
from sandboxd.models import ExecutionRequest
from tests.helpers import EXECUTE, Client, execute, execute_plan, images_of, metric_reaches

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
    monkeypatch.setitem(images_of(engine), "python", state)
    with pytest.raises(RuntimeUnavailableError, match="Runtime python is not available"):
        await execute_plan(engine, plan)
    assert not {info.language: info for info in engine.languages()}["python"].available


async def test_current_image_is_not_rebuilt(
    engine: Engine, containerd: ContainerdClient, config: Config
) -> None:
    """`images build` skips an image built from the current recipe, and says so."""
    python = engine.runtimes.get("python")
    assert python is not None
    shown = io.StringIO()
    work = image_build_dir(config)
    progress = BuildProgress(["python"], shown, work / "logs", redraw=False)
    state = await ImageBuilder(containerd, work, progress).build(python)
    assert state.available
    assert state.version is not None
    assert state.version.startswith("Python 3.")
    assert shown.getvalue() == f"python  current: {python.image}, {state.version}\n"


async def test_full_queue_is_503_with_retry_after(
    make_server: Callable[..., Awaitable[Client]], headers: dict[str, str]
) -> None:
    """With every slot busy and the queue full, a request is turned away at once with 503."""
    one_slot = await make_server(limits={"concurrency": 1, "queue": 1})
    body = {"code": "import time; time.sleep(2)", "language": "python"}
    running = asyncio.ensure_future(execute(one_slot, headers, **body))
    await metric_reaches(one_slot, "sandboxd_executions_in_flight", 1)
    queued = asyncio.ensure_future(execute(one_slot, headers, **body))
    await metric_reaches(one_slot, "sandboxd_queue_depth", 1)
    response = await one_slot.post(EXECUTE, data=json.dumps(body), headers=headers)
    assert response.status == 503
    assert response.headers.get("Retry-After") == "1"
    assert (await response.json())["detail"].startswith("Server busy")
    assert [(await running)[0], (await queued)[0]] == [200, 200]
