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
from tests.helpers import wait_for

# A daemon answers in seconds; on a loaded machine, inspecting every runtime's image takes longer.
START_SECONDS = 120.0


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
        self.headers = {"X-API-Key": key, "Content-Type": "application/json"}
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
        deadline = time.monotonic() + START_SECONDS
        async with self.session() as session:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get("/healthz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise AssertionError(f"the daemon did not start:\n{self.log.read_text()[-3000:]}")

    def session(self) -> aiohttp.ClientSession:
        """An HTTP session for the daemon's URL: the request helpers in tests/helpers.py take it."""
        return aiohttp.ClientSession(base_url=self.url)

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
    """One API call to ``daemon`` with its key, on a session shared by several daemons; the JSON body."""
    data = None if body is None else json.dumps(body)
    async with session.request(method, f"{daemon.url}{path}", data=data, headers=daemon.headers) as response:
        return await response.json()


async def final_results(session: aiohttp.ClientSession, daemon: Daemon, ids: list[str]) -> dict[str, Any]:
    """Each execution's final result, as ``daemon`` answers for it (polled, see helpers.wait_for)."""
    async with daemon.session() as own:
        return {execution_id: await wait_for(own, daemon.headers, execution_id) for execution_id in ids}
