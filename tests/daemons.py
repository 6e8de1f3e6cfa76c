"""`sandboxd serve` in subprocesses of their own, for tests that need a real daemon process."""

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


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(config: Config, port: int, path: Path, concurrency: int) -> None:
    """The daemon's configuration file: the test's containerd and directories, ``concurrency`` slots."""
    path.write_text(
        f"[server]\nport = {port}\n"
        '[health]\naddress = "127.0.0.1:0"\n'
        f'[containerd]\naddress = "{config.containerd.address}"\n'
        f'[paths]\nruntimes = "{config.paths.runtimes}"\nstate = "{config.paths.state}"\n'
        f'data = "{config.paths.data}"\n'
        f"[limits]\nconcurrency = {concurrency}\n"
        f'[store]\nurl = "{config.store.url}"\n'
    )


class Daemon:
    """`sandboxd serve` in a subprocess of its own."""

    def __init__(self, config: Config, config_path: Path, port: int, key: str, log: Path) -> None:
        self.environment: dict[str, str] = {}
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
                env={**os.environ, "SANDBOXD_API_KEYS": self.key, **self.environment},
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
    """One API call to ``daemon`` with its key; return the JSON body."""
    headers = {"X-API-Key": daemon.key, "Content-Type": "application/json"}
    data = None if body is None else json.dumps(body)
    async with session.request(method, f"{daemon.url}{path}", data=data, headers=headers) as response:
        return await response.json()


async def final_results(
    session: aiohttp.ClientSession, daemon: Daemon, ids: list[str], seconds: float = 60
) -> dict[str, Any]:
    """Poll the executions until each has a final state (or time runs out); return those that do."""
    results: dict[str, Any] = {}
    deadline = time.monotonic() + seconds
    while len(results) < len(ids) and time.monotonic() < deadline:
        for execution_id in ids:
            body = await call(session, daemon, "GET", f"/api/v1/executions/{execution_id}")
            if body["status"] not in ("queued", "running"):
                results[execution_id] = body
        await asyncio.sleep(0.2)
    return results
