"""Fixtures: the real containerd and runsc from the dev set-up, an in-process server, leftover checks."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sandboxd.api.app import create_app
from sandboxd.api.auth import generate_key
from sandboxd.api.state import ENGINE
from sandboxd.config import Config, load_config
from sandboxd.containerd import ContainerdClient
from sandboxd.engine.engine import Engine
from sandboxd.engine.host import client_for, prepare_host
from sandboxd.engine.orphans import command_lines, shim_sandbox
from sandboxd.engine.sandbox import HOST_LABEL, MANAGED_LABEL, Sandbox, host_id_for
from tests.postgres import Schemas, suite_on_postgres

pytest_plugins = ["tests.daemons"]

CONFIG_VARIABLE = "SANDBOXD_TEST_CONFIG"
log = logging.getLogger(__name__)


@attrs.frozen
class Leftovers:
    """Everything of sandboxd's that should be gone once no execution runs."""

    containers: list[str]
    tasks: list[str]
    snapshots: list[str]
    leases: list[str]
    mounts: list[str]
    state_entries: list[str]
    processes: list[str]

    def is_empty(self) -> bool:
        """True when nothing is left."""
        return not any(attrs.astuple(self))


# The most further daemons one test session makes (each gets <state>-<n>, see separate_daemon).
MAX_FURTHER_DAEMONS = 64


def test_state_dirs(config: Config) -> list[Path]:
    """Every state directory a test session uses: fixed names, so a later session finds an earlier one's."""
    state = config.paths.state
    return [state, *(state.parent / f"{state.name}-{n}" for n in range(MAX_FURTHER_DAEMONS))]


def pooled(engine: Engine) -> Callable[[], set[str]]:
    """The sandboxes ``engine``'s pool holds or boots now: idle, they are no execution's leftovers."""
    return engine.pooled_sandbox_ids


async def find_leftovers(
    client: ContainerdClient, config: Config, keep: Callable[[], set[str]] = set
) -> Leftovers:
    """List the containers, tasks, snapshots, leases, mounts, workspaces and FIFOs of the tests' daemons.

    Only sandboxes labelled by a test daemon count: a dev daemon serving from the same
    containerd at the same time is none of the tests' business; nor do the sandboxes
    ``keep`` names, asked before and after looking (a pool may start a boot meanwhile).
    """
    kept = keep()
    found = await _find_all(client, config)
    kept |= keep()
    return Leftovers(
        containers=[name for name in found.containers if name not in kept],
        tasks=[name for name in found.tasks if name not in kept],
        snapshots=[name for name in found.snapshots if name not in kept],
        leases=[name for name in found.leases if name not in kept],
        mounts=[path for path in found.mounts if Path(path).name not in kept],
        state_entries=[path for path in found.state_entries if Path(path).name not in kept],
        processes=[entry for entry in found.processes if entry.split()[1] not in kept],
    )


async def _find_all(client: ContainerdClient, config: Config) -> Leftovers:
    hosts = {host_id_for(path) for path in test_state_dirs(config)}
    managed = f'labels."{MANAGED_LABEL}"'
    state = config.paths.state
    containers = [c for c in await client.containers.list([managed]) if c.labels.get(HOST_LABEL) in hosts]
    snapshots = [s for s in await client.snapshots.list([managed]) if s.labels.get(HOST_LABEL) in hosts]
    leases = [lease for lease in await client.leases.list([managed]) if lease.labels.get(HOST_LABEL) in hosts]
    ours = {c.id for c in containers} | {s.name for s in snapshots} | {lease.id for lease in leases}
    mounts_table = await asyncio.to_thread(Path("/proc/self/mounts").read_text)
    mounts = [line.split()[1] for line in mounts_table.splitlines()]
    entries = [
        str(p)
        for directory in (state / "workspaces", state / "fifos")
        if directory.exists()
        for p in directory.iterdir()
    ]
    tasks = await client.tasks.list()
    return Leftovers(
        containers=[c.id for c in containers],
        tasks=[t.container_id for t in tasks if t.container_id in ours],
        snapshots=[s.name for s in snapshots],
        leases=[lease.id for lease in leases],
        mounts=[m for m in mounts if m.startswith(str(state))],
        state_entries=entries,
        processes=await _orphaned_processes(client.namespace, config, {t.container_id for t in tasks}),
    )


# A shim exits a moment after containerd deleted its task: what outlives this was left behind.
SHIM_EXIT_GRACE = 3.0


async def _orphaned_processes(namespace: str, config: Config, live: set[str]) -> list[str]:
    """Shims of ``namespace`` and runsc processes of the tests' daemons serving no task containerd knows.

    containerd forgets a sandbox whose shim it lost track of, so its own listing
    cannot show such a leak; the host's process table does.
    """
    runsc_roots = tuple(f"--root={state}/runsc/" for state in test_state_dirs(config))
    deadline = asyncio.get_running_loop().time() + SHIM_EXIT_GRACE
    while True:
        found = await asyncio.to_thread(_runtime_processes, namespace, runsc_roots)
        orphans = [f"{kind} {sandbox} (pid {pid})" for pid, kind, sandbox in found if sandbox not in live]
        if not orphans or asyncio.get_running_loop().time() > deadline:
            return orphans
        await asyncio.sleep(0.2)


def _runtime_processes(namespace: str, runsc_roots: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """(pid, "shim" or "runsc", sandbox id) of each runtime process on this host that serves a sandbox."""
    found = []
    for entry, argv in command_lines():
        if (sandbox := shim_sandbox(argv, namespace)) is not None:
            found.append((int(entry.name), "shim", sandbox))
        elif argv[0].startswith("runsc") and any(arg.startswith(runsc_roots) for arg in argv):
            found.append((int(entry.name), "runsc", _runsc_container(argv)))
    return found


def _runsc_container(argv: list[str]) -> str:
    """The container a runsc process serves: its log file sits in the task's bundle, named by the id."""
    for arg in argv:
        if arg.startswith("--log=") and arg.endswith("/log.json"):
            return Path(arg.removeprefix("--log=")).parent.name
    return argv[-1]


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
        state = config.paths.state.parent / f"{config.paths.state.name}-{len(made) // 2}"
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
    leftovers = await find_leftovers(containerd, config)
    if leftovers.is_empty():
        return
    log.warning("removing resources an earlier run left behind: %s", leftovers)
    host = await asyncio.to_thread(prepare_host, config, containerd)
    ids = {*leftovers.containers, *leftovers.tasks, *leftovers.snapshots, *leftovers.leases}
    for sandbox_id in sorted(ids):
        await Sandbox.adopt(host, sandbox_id).destroy()


@pytest.fixture(scope="session")
async def server(config: Config, api_key: str, containerd: ContainerdClient) -> AsyncIterator[TestServer]:
    """Sandboxd on a loopback port, against the real containerd; after the suite, nothing may be left."""
    await sweep_earlier_runs(containerd, config)
    app = create_app(attrs.evolve(config, dev_keys=(api_key,)))
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    yield test_server
    await app[ENGINE].drain()
    await test_server.close()
    leftovers = await find_leftovers(containerd, config)
    assert leftovers.is_empty(), f"the suite left resources behind: {leftovers}"


@pytest.fixture
async def http(server: TestServer) -> AsyncIterator[TestClient[Any, Any]]:
    """An HTTP client for the test server."""
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    yield client
    await client.session.close()


@pytest.fixture
def engine(server: TestServer) -> Engine:
    """The running server's engine, for tests that need limits no request can set."""
    return server.app[ENGINE]


@pytest.fixture
def headers(api_key: str) -> dict[str, str]:
    """Headers of an authenticated JSON request."""
    return {"X-API-Key": api_key, "Content-Type": "application/json"}
