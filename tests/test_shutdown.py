"""SIGTERM: running work finishes within the grace period, queued work waits for the next start."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import pytest

from tests.daemons import Daemon
from tests.helpers import execute, execution, submit, wait_for

pytestmark = pytest.mark.integration


async def test_graceful_shutdown(make_daemon: Callable[[int], Daemon]) -> None:
    """In-flight sync and async executions complete; a queued one is kept and runs after the restart."""
    daemon = make_daemon(2)
    daemon.environment = {"SANDBOXD_SERVER_SHUTDOWN_GRACE": "15"}
    await daemon.start()
    assert daemon.process is not None
    slow = "import time\ntime.sleep(3)\nprint('{}')"
    headers = daemon.headers
    async with daemon.session() as http:
        running = await submit(http, headers, code=slow.format("A"), language="python")
        sync = asyncio.ensure_future(execute(http, headers, code=slow.format("S"), language="python"))
        await wait_for(http, headers, running, "running")
        await asyncio.sleep(0.5)
        queued = await submit(http, headers, code="print('B')", language="python")
        assert (await execution(http, headers, queued))["status"] == "queued"

        stopping = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        status, result = await asyncio.wait_for(sync, 20)
        assert (status, result["status"], result["stdout"]) == (200, "completed", "S\n")
        assert await asyncio.wait_for(daemon.process.wait(), 20) == 0
        assert time.monotonic() - stopping < 15

        await daemon.start()
        finished = await execution(http, headers, running)
        assert (finished["status"], finished["stdout"]) == ("completed", "A\n")
        later = await wait_for(http, headers, queued)
        assert (later["status"], later["stdout"]) == ("completed", "B\n")
