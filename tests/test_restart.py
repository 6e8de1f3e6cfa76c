"""A daemon killed with SIGKILL loses nothing: a restart settles every accepted execution."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import pytest

from sandboxd.containerd import ContainerdClient
from sandboxd.engine.roots import ROOT_LABEL
from sandboxd.engine.sandbox import HOST_LABEL, host_id_for
from tests.daemons import Daemon
from tests.helpers import execute, execution, metric_reaches, poll, submit, wait_for, wait_started

pytestmark = pytest.mark.integration

# A program's first line: it marks its own sandbox's workspace (see helpers.started_in).
STARTED = "import time\nopen('/workspace/started', 'w').close()"


async def sandboxes_of(containerd: ContainerdClient, daemon: Daemon) -> set[str]:
    """Every sandbox of ``daemon`` that containerd knows of, whole or in part, as reconciliation sees them."""
    mine = [f'labels."{HOST_LABEL}"=={host_id_for(daemon.config.paths.state)}']
    found = {container.id for container in await containerd.containers.list(mine)}
    found |= {s.name for s in await containerd.snapshots.list(mine) if ROOT_LABEL not in s.labels}
    leases = await containerd.leases.list(mine)
    return found | {lease.id for lease in leases if ROOT_LABEL not in lease.labels}


async def roots_of(containerd: ContainerdClient, daemon: Daemon) -> set[str]:
    """The shared image roots of ``daemon`` that containerd holds (their leases)."""
    mine = [f'labels."{HOST_LABEL}"=={host_id_for(daemon.config.paths.state)}', f'labels."{ROOT_LABEL}"']
    return {lease.id for lease in await containerd.leases.list([",".join(mine)])}


async def test_kill_9_loses_no_execution(
    make_daemon: Callable[[int], Daemon], containerd: ContainerdClient
) -> None:
    """Queued and running async executions survive SIGKILL: after a restart each completes under its id."""
    daemon = make_daemon(2)
    await daemon.start()
    code = f"{STARTED}\ntime.sleep(5)\nprint('done {{}}')"
    async with daemon.session() as http:
        ids = [await submit(http, daemon.headers, code=code.format(i), language="python") for i in range(5)]

        async def states() -> list[str]:
            return [(await execution(http, daemon.headers, i))["status"] for i in ids]

        found = await poll(states, lambda found: found.count("running") == 2, "two executions running")
        assert sorted(found) == ["queued", "queued", "queued", "running", "running"]
        running = await wait_started(daemon.config.paths.state, "started", 2)

        await daemon.stop(signal.SIGKILL)
        await asyncio.sleep(0.5)  # containerd finishes the calls the daemon had in flight
        orphans = await sandboxes_of(containerd, daemon)
        # The two running executions' sandboxes, and what the pool had ready or was booting.
        assert running <= orphans, "the killed daemon should have left its two running sandboxes"
        left_roots = await roots_of(containerd, daemon)
        assert len(left_roots) == 1, "the killed daemon should have left its python image's root"

        await daemon.start()
        results = {i: await wait_for(http, daemon.headers, i) for i in ids}
        assert not left_roots & await roots_of(containerd, daemon), "the earlier run's root is gone"
    assert [results[i]["status"] for i in ids] == ["completed"] * 5
    assert [results[i]["stdout"] for i in ids] == [f"done {n}\n" for n in range(5)]
    log = daemon.log.read_text()
    assert f"removed {len(orphans)} sandboxes left by a previous run" in log
    assert "removed 1 shared image roots left by a previous run" in log


async def test_kill_9_with_eight_in_flight(
    make_daemon: Callable[[int], Daemon], containerd: ContainerdClient
) -> None:
    """Eight executions running (six async, two sync) at SIGKILL: the restart clears them within 10 s.

    The async ones then complete under their ids; the sync ones, whose clients are gone,
    are recorded as interrupted.
    """
    daemon = make_daemon(8)
    await daemon.start()
    # Long enough that the first program still runs when the last of eight boots on a loaded machine.
    code = f"{STARTED}\ntime.sleep(15)\nprint('done')"
    async with daemon.session() as http:
        ids = [await submit(http, daemon.headers, code=code, language="python", timeout=30) for _ in range(6)]
        sync = {"code": code, "language": "python", "session_id": "sync-at-crash", "timeout": 30}
        clients = [asyncio.ensure_future(execute(http, daemon.headers, **sync)) for _ in range(2)]
        await metric_reaches(http, "sandboxd_executions_in_flight", 8)
        running = await wait_started(daemon.config.paths.state, "started", 8)
        await daemon.stop(signal.SIGKILL)
        await asyncio.gather(*clients, return_exceptions=True)
        await asyncio.sleep(0.5)  # containerd finishes the calls the daemon had in flight
        orphans = await sandboxes_of(containerd, daemon)
        assert running <= orphans, "the killed daemon should have left its eight running sandboxes"

        restarted = time.monotonic()
        await daemon.start()
        ready_after = time.monotonic() - restarted
        assert f"removed {len(orphans)} sandboxes left by a previous run" in daemon.log.read_text()
        assert ready_after < 10, f"restart with reconciliation took {ready_after:.1f} s"

        results = {i: await wait_for(http, daemon.headers, i) for i in ids}
        assert [results[i]["status"] for i in ids] == ["completed"] * 6
        response = await http.get("/api/v1/sessions/sync-at-crash/executions", headers=daemon.headers)
        listing = await response.json()
    assert [e["status"] for e in listing["executions"]] == ["internal_error"] * 2
