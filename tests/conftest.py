"""Fixtures: the real containerd and runsc from the dev set-up, in-process servers, leftover checks."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sandboxd.api.app import create_app
from sandboxd.api.auth import generate_key
from sandboxd.config import Config, load_config
from sandboxd.containerd import ContainerdClient
from sandboxd.engine.engine import Engine
from sandboxd.engine.host import client_for, prepare_host
from sandboxd.engine.sandbox import Sandbox
from tests.helpers import Client, engine_of, finish_cleanups, further_state, state_dirs
from tests.leftovers import find_leftovers
from tests.postgres import Schemas, suite_on_postgres

pytest_plugins = ["tests.daemons"]

CONFIG_VARIABLE = "SANDBOXD_TEST_CONFIG"
log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def config() -> Iterator[Config]:
    """The dev set-up's configuration, with a state directory of this test run's own (removed after)."""
    path = os.environ.get(CONFIG_VARIABLE)
    if not path:
        pytest.fail(f"{CONFIG_VARIABLE} is not set: run the suite through `scripts/dev test`")
    loaded = load_config(Path(path), os.environ)
    state = loaded.paths.state.parent / f"{loaded.paths.state.name}-test"
    data = Path(tempfile.mkdtemp(prefix="sandboxd-test-data-"))
    schemas = Schemas()
    store = attrs.evolve(loaded.store, url=schemas.url()) if suite_on_postgres() else loaded.store
    yield attrs.evolve(
        loaded,
        health=attrs.evolve(loaded.health, address="127.0.0.1:0"),
        paths=attrs.evolve(loaded.paths, state=state, data=data),
        limits=attrs.evolve(loaded.limits, concurrency=4),
        store=store,
    )
    schemas.close()
    # runsc keeps the state of live sandboxes under the state directory; without it they could
    # never be removed, so a run that left any keeps the directory for the next one to sweep.
    if not any((state / "runsc" / loaded.containerd.namespace).glob("*")):
        shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL whose connections see only a fresh schema of this test's own (dropped after)."""
    schemas = Schemas()
    yield schemas.url()
    schemas.close()


@pytest.fixture
def separate_daemon(config: Config) -> Iterator[Callable[[], Config]]:
    """Make configurations for further daemons: each with its own state and data directories.

    Two daemons must never share them: each reconciles its state directory's
    sandboxes and recovers its data directory's executions when it starts.
    """
    made: list[Path] = []
    schemas = Schemas()

    def make() -> Config:
        state = further_state(config, len(made) // 2)
        data = Path(tempfile.mkdtemp(prefix="sandboxd-test-data-"))
        made.extend([state, data])
        # A store of its own too: on PostgreSQL, a daemon sharing one would share its queue.
        store = attrs.evolve(config.store, url=schemas.url()) if suite_on_postgres() else config.store
        return attrs.evolve(config, paths=attrs.evolve(config.paths, state=state, data=data), store=store)

    yield make
    schemas.close()
    for directory in made:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def api_key() -> str:
    """A key the test server accepts."""
    return generate_key()


@pytest.fixture(scope="session")
async def containerd(config: Config) -> AsyncIterator[ContainerdClient]:
    """A containerd client of the tests' own, to look behind the daemon's back."""
    client = client_for(config)
    yield client
    await client.close()


async def sweep_earlier_runs(containerd: ContainerdClient, config: Config) -> None:
    """Remove what an earlier, aborted run left in the namespace, so this run answers only for itself."""
    leftovers = await find_leftovers(containerd, state_dirs(config))
    if leftovers.is_empty():
        return
    log.warning("removing resources an earlier run left behind: %s", leftovers)
    host = await asyncio.to_thread(prepare_host, config, containerd)
    ids = {*leftovers.containers, *leftovers.tasks, *leftovers.snapshots, *leftovers.leases}
    for sandbox_id in sorted(ids):
        await Sandbox.adopt(host, sandbox_id).destroy()


def in_process_server(config: Config) -> TestServer:
    """An in-process sandboxd for ``config`` on a loopback port: the one place the tests make one."""
    return TestServer(create_app(config), host="127.0.0.1")


@pytest.fixture(scope="session")
async def server(config: Config, api_key: str, containerd: ContainerdClient) -> AsyncIterator[TestServer]:
    """Sandboxd on a loopback port, against the real containerd; after the suite, nothing may be left."""
    await sweep_earlier_runs(containerd, config)
    shared = in_process_server(attrs.evolve(config, dev_keys=(api_key,)))
    await shared.start_server()
    yield shared
    await finish_cleanups(engine_of(shared.app))
    await shared.close()
    leftovers = await find_leftovers(containerd, state_dirs(config))
    assert leftovers.is_empty(), f"the suite left resources behind: {leftovers}"


@pytest.fixture
async def http(server: TestServer) -> AsyncIterator[Client]:
    """An HTTP client for the test server."""
    client: Client = TestClient(server)
    await client.start_server()
    yield client
    await client.session.close()


@pytest.fixture
async def make_server(
    separate_daemon: Callable[[], Config], api_key: str
) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """Start in-process servers of the test's own, for a configuration the shared server does not have.

    Each has its own state and data directories and accepts the test key unless ``changes``
    say otherwise; ``limits`` changes some of the limits, ``runtimes`` names another runtimes
    directory. Each is stopped after the test.
    """
    clients: list[Client] = []

    async def make(
        limits: Mapping[str, Any] | None = None, runtimes: Path | None = None, **changes: Any
    ) -> Client:
        config = separate_daemon()
        config = attrs.evolve(
            config,
            **{"dev_keys": (api_key,), **changes},
            limits=attrs.evolve(config.limits, **(limits or {})),
            paths=attrs.evolve(config.paths, runtimes=runtimes or config.paths.runtimes),
        )
        client: Client = TestClient(in_process_server(config))
        clients.append(client)
        await client.start_server()
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def engine(server: TestServer) -> Engine:
    """The running server's engine, for tests that need limits no request can set."""
    return engine_of(server.app)


@pytest.fixture
def headers(api_key: str) -> dict[str, str]:
    """Headers of an authenticated JSON request."""
    return {"X-API-Key": api_key, "Content-Type": "application/json"}
