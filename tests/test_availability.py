"""Runtimes without an image, a full queue, and image builds that have nothing to do."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from sandboxd.api.state import CONFIG
from sandboxd.config import Config
from sandboxd.containerd import ContainerdClient
from sandboxd.engine.engine import Engine, RuntimeUnavailableError
from sandboxd.images.build import ImageBuilder
from sandboxd.images.inspect import (
    builds_in_progress,
    image_build_dir,
    inspect_image,
    mark_building,
    unmark_building,
)
from sandboxd.images.progress import BuildProgress
from sandboxd.models import ExecutionRequest
from tests.helpers import (
    EXECUTE,
    SHIPPED_RUNTIMES,
    Client,
    execute,
    execute_plan,
    images_of,
    metric_reaches,
    poll,
    run_ctr,
    shipped_runtimes,
)

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
    assert not {info.runtime: info for info in engine.languages()}["python"].available


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


async def test_an_image_built_while_the_daemon_runs_serves_without_a_restart(
    make_server: Callable[..., Awaitable[Client]], headers: dict[str, str], config: Config, tmp_path: Path
) -> None:
    """A runtime listed as "image building" meanwhile becomes available by itself once its image is in."""
    reference = f"sandboxd.local/test/late-python:{uuid.uuid4().hex[:12]}"
    runtimes = tmp_path / "runtimes"
    runtimes.mkdir()
    shipped = shipped_runtimes().get("python")
    assert shipped is not None
    python = (SHIPPED_RUNTIMES / "python.toml").read_text()
    (runtimes / "python.toml").write_text(python.replace(shipped.image, reference))
    http = await make_server(runtimes=runtimes)

    async def python_listed() -> dict[str, Any]:
        response = await http.get("/api/v1/languages", headers=headers)
        listing: dict[str, dict[str, Any]] = {item["runtime"]: item for item in await response.json()}
        return listing["python"]

    listed = await python_listed()
    assert not listed["available"]
    assert "is not in containerd" in listed["reason"]
    marker = mark_building(builds_in_progress(http.app[CONFIG].paths.data), "python")
    try:
        await poll(
            python_listed, lambda item: item["reason"].startswith("image building (since "), "building"
        )
        # What a finished build does: the image appears in containerd, and the marker goes.
        await run_ctr(config, "images", "tag", shipped.image, reference)
    finally:
        unmark_building(marker)
    try:
        await poll(python_listed, lambda item: item["available"], "python available")
        status, result = await execute(http, headers, code="print('late')", language="python")
        assert (status, result["stdout"]) == (200, "late\n")
    finally:
        await run_ctr(config, "images", "rm", reference)
