"""SIGTERM: running work finishes within the grace period, queued work waits for the next start."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import aiohttp
import pytest

from tests.daemons import Daemon, call

pytestmark = pytest.mark.integration


async def test_graceful_shutdown(make_daemon: Callable[[int], Daemon]) -> None:
    """In-flight sync and async executions complete; a queued one is kept and runs after the restart."""
    daemon = make_daemon(2)
    daemon.environment = {"SANDBOXD_SERVER_SHUTDOWN_GRACE": "15"}
    await daemon.start()
    assert daemon.process is not None
    slow = "import time\ntime.sleep(3)\nprint('{}')"
    async with aiohttp.ClientSession() as session:
        running = await call(
            session, daemon, "POST", "/api/v1/execute/async", {"code": slow.format("A"), "language": "python"}
        )
        sync = asyncio.ensure_future(
            call(session, daemon, "POST", "/api/v1/execute", {"code": slow.format("S"), "language": "python"})
        )
        for _ in range(100):
            state = await call(session, daemon, "GET", f"/api/v1/executions/{running['execution_id']}")
            if state["status"] == "running":
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        queued = await call(
            session, daemon, "POST", "/api/v1/execute/async", {"code": "print('B')", "language": "python"}
        )
        assert (await call(session, daemon, "GET", f"/api/v1/executions/{queued['execution_id']}"))[
            "status"
        ] == "queued"

        stopping = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        result = await asyncio.wait_for(sync, 20)
        assert (result["status"], result["stdout"]) == ("completed", "S\n")
        assert await asyncio.wait_for(daemon.process.wait(), 20) == 0
        assert time.monotonic() - stopping < 15

        await daemon.start()
        finished = await call(session, daemon, "GET", f"/api/v1/executions/{running['execution_id']}")
        assert (finished["status"], finished["stdout"]) == ("completed", "A\n")
        for _ in range(200):
            later = await call(session, daemon, "GET", f"/api/v1/executions/{queued['execution_id']}")
            if later["status"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.1)
        assert (later["status"], later["stdout"]) == ("completed", "B\n")
