"""A daemon killed with SIGKILL loses nothing: a restart settles every accepted execution."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sandboxd.config import Config
from sandboxd.containerd import ContainerdClient
from sandboxd.sandbox import HOST_LABEL, host_id_for

pytestmark = pytest.mark.integration


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(config: Config, port: int, path: Path, concurrency: int) -> None:
    """The daemon's configuration file: the test's containerd and directories, ``concurrency`` slots."""
    path.write_text(
        f"[server]\nport = {port}\n"
        f'[containerd]\naddress = "{config.containerd.address}"\n'
        f'[paths]\nruntimes = "{config.paths.runtimes}"\nstate = "{config.paths.state}"\n'
        f'data = "{config.paths.data}"\n'
        f"[limits]\nconcurrency = {concurrency}\n"
    )


class Daemon:
    """`sandboxd serve` in a subprocess of its own."""

    def __init__(self, config: Config, config_path: Path, port: int, key: str, log: Path) -> None:
        self.config = config
        self.config_path = config_path
        self.url = f"http://127.0.0.1:{port}"
        self.key = key
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the daemon and wait until it answers."""
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sandboxd", "--log-level", "DEBUG",
                "--config", str(self.config_path), "serve",
                env={**os.environ, "SANDBOXD_API_KEYS": self.key},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )  # fmt: skip
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise AssertionError(f"the daemon did not start:\n{self.log.read_text()[-3000:]}")

    async def stop(self, sig: signal.Signals) -> None:
        """Send ``sig`` and wait for the process to end."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)
            await asyncio.wait_for(self.process.wait(), 60)


@pytest.fixture
async def make_daemon(
    separate_daemon: Callable[[], Config], api_key: str, tmp_path: Path
) -> AsyncIterator[Callable[[int], Daemon]]:
    """Make daemons on free loopback ports, each with state and data directories of its own."""
    made: list[Daemon] = []

    def make(concurrency: int) -> Daemon:
        config = separate_daemon()
        port = free_port()
        config_path = tmp_path / f"config-{port}.toml"
        write_config(config, port, config_path, concurrency)
        made.append(Daemon(config, config_path, port, api_key, tmp_path / f"daemon-{port}.log"))
        return made[-1]

    yield make
    for daemon in made:
        await daemon.stop(signal.SIGTERM)


async def call(
    session: aiohttp.ClientSession, daemon: Daemon, method: str, path: str, body: Any = None
) -> Any:
    """One API call; return the JSON body."""
    headers = {"X-API-Key": daemon.key, "Content-Type": "application/json"}
    data = None if body is None else json.dumps(body)
    async with session.request(method, f"{daemon.url}{path}", data=data, headers=headers) as response:
        return await response.json()


async def test_kill_9_loses_no_execution(
    make_daemon: Callable[[int], Daemon], containerd: ContainerdClient
) -> None:
    """Queued and running async executions survive SIGKILL: after a restart each completes under its id."""
    daemon = make_daemon(2)
    mine = [f'labels."{HOST_LABEL}"=={host_id_for(daemon.config.paths.state)}']
    await daemon.start()
    code = "import time\ntime.sleep(2)\nprint('done {}')"
    async with aiohttp.ClientSession() as session:
        accepted = [
            await call(
                session,
                daemon,
                "POST",
                "/api/v1/execute/async",
                {"code": code.format(i), "language": "python"},
            )
            for i in range(5)
        ]
        ids = [item["execution_id"] for item in accepted]
        for _ in range(100):
            states = [(await call(session, daemon, "GET", f"/api/v1/executions/{i}"))["status"] for i in ids]
            if states.count("running") == 2:
                break
            await asyncio.sleep(0.1)
        assert sorted(states) == ["queued", "queued", "queued", "running", "running"]
        await asyncio.sleep(0.5)

        await daemon.stop(signal.SIGKILL)
        orphans = await containerd.containers.list(mine)
        assert len(orphans) == 2, "the killed daemon should have left its two running sandboxes"

        restarted = time.monotonic()
        await daemon.start()
        results: dict[str, Any] = {}
        while len(results) < len(ids) and time.monotonic() - restarted < 60:
            for execution_id in ids:
                body = await call(session, daemon, "GET", f"/api/v1/executions/{execution_id}")
                if body["status"] not in ("queued", "running"):
                    results[execution_id] = body
            await asyncio.sleep(0.2)
    assert [results[i]["status"] for i in ids] == ["completed"] * 5
    assert [results[i]["stdout"] for i in ids] == [f"done {n}\n" for n in range(5)]
    assert "removed 2 sandboxes left by a previous run" in daemon.log.read_text()


async def test_kill_9_with_eight_in_flight(
    make_daemon: Callable[[int], Daemon], containerd: ContainerdClient
) -> None:
    """Eight executions running (six async, two sync) at SIGKILL: the restart clears them within 10 s.

    The async ones then complete under their ids; the sync ones, whose clients are gone,
    are recorded as interrupted.
    """
    daemon = make_daemon(8)
    mine = [f'labels."{HOST_LABEL}"=={host_id_for(daemon.config.paths.state)}']
    await daemon.start()
    code = "import time\ntime.sleep(4)\nprint('done')"
    async with aiohttp.ClientSession() as session:
        ids = [
            (
                await call(
                    session, daemon, "POST", "/api/v1/execute/async", {"code": code, "language": "python"}
                )
            )["execution_id"]
            for _ in range(6)
        ]
        sync = {"code": code, "language": "python", "session_id": "sync-at-crash"}
        clients = [
            asyncio.ensure_future(call(session, daemon, "POST", "/api/v1/execute", sync)) for _ in range(2)
        ]
        for _ in range(100):
            tasks = [t for t in await containerd.tasks.list() if t.status == "RUNNING"]
            if len(await containerd.containers.list(mine)) == 8 and len(tasks) >= 8:
                break
            await asyncio.sleep(0.1)
        assert len(await containerd.containers.list(mine)) == 8
        await daemon.stop(signal.SIGKILL)
        await asyncio.gather(*clients, return_exceptions=True)

        restarted = time.monotonic()
        await daemon.start()
        ready_after = time.monotonic() - restarted
        assert "removed 8 sandboxes left by a previous run" in daemon.log.read_text()
        assert ready_after < 10, f"restart with reconciliation took {ready_after:.1f} s"

        results: dict[str, Any] = {}
        while len(results) < len(ids) and time.monotonic() - restarted < 60:
            for execution_id in ids:
                body = await call(session, daemon, "GET", f"/api/v1/executions/{execution_id}")
                if body["status"] not in ("queued", "running"):
                    results[execution_id] = body
            await asyncio.sleep(0.2)
        assert [results[i]["status"] for i in ids] == ["completed"] * 6
        listing = await call(session, daemon, "GET", "/api/v1/sessions/sync-at-crash/executions")
    assert [e["status"] for e in listing["executions"]] == ["internal_error"] * 2
