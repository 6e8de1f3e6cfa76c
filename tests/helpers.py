"""What the tests share: requests to a server, a clock moved by hand, and the few reaches into the daemon.

The request helpers take either the in-process test server's client or an aiohttp
session whose base URL is a daemon's (``Daemon.session``), with the headers to send.

Every test that looks at the engine's internals does so through a function here, so
that a change inside the engine is answered in one place.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

from sandboxd.api.state import ENGINE, HEALTH_PORT
from sandboxd.config import Config
from sandboxd.containerd import ContainerdClient
from sandboxd.engine.engine import Engine, Plan
from sandboxd.engine.pool import SandboxPool
from sandboxd.images.inspect import ImageState
from sandboxd.models import ExecutionRequest, ExecutionResult, ExecutionStatus
from sandboxd.runtimes import RuntimeRegistry, load_runtimes
from tests.leftovers import Leftovers, find_leftovers

Client = TestClient[Any, Any]
Http = Client | aiohttp.ClientSession

SHIPPED_RUNTIMES = Path(__file__).resolve().parent.parent / "runtimes"
EXECUTE = "/api/v1/execute"
# How long polling waits for a state a loaded machine reaches in well under this.
POLL_SECONDS = 60.0
# What a loaded 2-core machine (other test runs, image builds) may add to a step that takes a
# moment when idle: killing a program at its timeout, ending a sandbox's processes.
SLACK = 3.0
# The same for a whole request, which boots and tears down a sandbox besides.
REQUEST_SLACK = 15.0
UNFINISHED = frozenset({ExecutionStatus.QUEUED, ExecutionStatus.RUNNING})
T = TypeVar("T")


# The most further daemons one test session makes (each gets <state>-<n>, see further_state).
MAX_FURTHER_DAEMONS = 64


def further_state(config: Config, n: int) -> Path:
    """The state directory of the ``n``-th further daemon of a test session whose own is ``config``'s."""
    state = config.paths.state
    return state.parent / f"{state.name}-{n}"


def state_dirs(config: Config) -> list[Path]:
    """Every state directory a test session uses: fixed names, so a later session finds an earlier one's."""
    return [config.paths.state, *(further_state(config, n) for n in range(MAX_FURTHER_DAEMONS))]


def shipped_runtimes() -> RuntimeRegistry:
    """The runtimes this repository ships in runtimes/."""
    return load_runtimes(SHIPPED_RUNTIMES)


# -- requests ---------------------------------------------------------------------------


async def post(http: Http, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    """POST ``body`` as JSON to ``path``; return the status code and the JSON answer."""
    data = json.dumps(body).encode()
    # aiohttp warns of bodies over 1 MiB given as bytes (a file object is streamed instead).
    payload = io.BytesIO(data) if len(data) > 1 << 20 else data
    headers = {"Content-Type": "application/json", **headers}
    response = await http.post(path, data=payload, headers=headers)
    return response.status, await response.json()


async def post_raw(http: Http, body: str, headers: dict[str, str]) -> tuple[int, Any]:
    """POST a body as it is, well-formed or not, to /api/v1/execute (streamed, with no length given)."""
    response = await http.post(EXECUTE, data=io.BytesIO(body.encode()), headers=headers)
    return response.status, await response.json()


async def execute(http: Http, headers: dict[str, str], **body: Any) -> tuple[int, Any]:
    """POST one synchronous execution; return the status code and the JSON body."""
    return await post(http, EXECUTE, body, headers)


async def run(http: Http, headers: dict[str, str], code: str, language: str = "python", **body: Any) -> Any:
    """Execute synchronously (a ``timeout`` of None is left out); the request itself must succeed."""
    if "timeout" in body and body["timeout"] is None:
        del body["timeout"]
    status, result = await execute(http, headers, code=code, language=language, **body)
    assert status == 200, result
    return result


async def batch(http: Http, headers: dict[str, str], items: Any) -> tuple[int, Any]:
    """POST a batch; return the status code and the JSON body."""
    return await post(http, f"{EXECUTE}/batch", items, headers)


async def submit(http: Http, headers: dict[str, str], **body: Any) -> str:
    """Submit an asynchronous execution; return its id."""
    status, accepted = await post(http, f"{EXECUTE}/async", body, headers)
    assert status == 202, accepted
    assert accepted["status"] == "queued"
    return str(accepted["execution_id"])


async def poll(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str) -> T:
    """Ask ``probe`` until ``done`` holds for its answer, and return that; else fail, naming ``what``.

    The deadline is far past what a loaded machine needs: only a state never reached hits it.
    """
    deadline = time.monotonic() + POLL_SECONDS
    while not done(answer := await probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {POLL_SECONDS:g} s; last seen: {answer}")
        await asyncio.sleep(0.02)
    return answer


async def execution(http: Http, headers: dict[str, str], execution_id: str) -> Any:
    """GET an execution: its state, or its result once it has one."""
    response = await http.get(f"/api/v1/executions/{execution_id}", headers=headers)
    return await response.json()


async def wait_for(http: Http, headers: dict[str, str], execution_id: str, *states: str) -> Any:
    """Poll the execution until it is in one of ``states`` (any final one when none are named)."""

    async def probe() -> Any:
        return await execution(http, headers, execution_id)

    def reached(body: Any) -> bool:
        return body["status"] in states if states else body["status"] not in UNFINISHED

    return await poll(probe, reached, f"{execution_id} reaching {states or 'a final state'}")


def samples(exposition: str) -> dict[str, float]:
    """Each sample of a Prometheus text exposition: its value by its name with labels, spelt as there."""
    found = {}
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


async def metrics(http: Http) -> dict[str, float]:
    """The samples of the daemon's /metrics (see ``samples``)."""
    response = await http.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return samples(await response.text())


async def metric_reaches(http: Http, name: str, value: float) -> None:
    """Wait until the sample ``name`` of the daemon's /metrics reads ``value``."""
    await poll(
        lambda: metrics(http), lambda samples: samples.get(name) == value, f"{name} reaching {value:g}"
    )


async def execute_plan(engine: Engine, plan: Plan) -> ExecutionResult:
    """Run a planned execution through ``engine`` directly, past the HTTP API, under a new id."""
    result, _ = await engine.execute(plan, str(uuid.uuid4()))
    return result


async def engine_run(engine: Engine, language: str, code: str, **request: Any) -> ExecutionResult:
    """Plan a snippet's execution and run it through ``engine`` directly, past the HTTP API."""
    return await execute_plan(engine, engine.plan(ExecutionRequest(code=code, language=language, **request)))


def started_in(state: Path, marker: str) -> set[str]:
    """The sandboxes of the daemon with this state directory whose program created /workspace/<marker>.

    A program that writes a marker this way names its own sandbox, which the pool's
    idle sandboxes and other executions' cannot be taken for.
    """
    return {path.parent.name for path in (state / "workspaces").glob(f"*/{marker}")}


async def wait_started(state: Path, marker: str, count: int = 1) -> set[str]:
    """Wait until ``count`` sandboxes' programs created /workspace/<marker>; return those sandboxes."""

    async def probe() -> set[str]:
        return await asyncio.to_thread(started_in, state, marker)

    found = await poll(probe, lambda found: len(found) >= count, f"{count} programs creating {marker}")
    assert len(found) == count, found
    return found


# -- time -------------------------------------------------------------------------------


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        """The time now."""
        return self.now


# -- the daemon's internals, one function each ------------------------------------------


def engine_of(app: web.Application) -> Engine:
    """The engine of an in-process server's application."""
    return app[ENGINE]


def health_port_of(app: web.Application) -> int:
    """The port an in-process server's gRPC health service listens on."""
    return app[HEALTH_PORT]


def images_of(engine: Engine) -> dict[str, ImageState]:
    """The engine's idea of each runtime's image, by runtime name (a test may replace one)."""
    return engine._images


def is_quiet(engine: Engine) -> bool:
    """True while no program runs in any of the engine's sandboxes (its housekeeping may go on)."""
    return engine._housekeeping._quiet.is_set()


def pooled(engine: Engine) -> Callable[[], set[str]]:
    """What ``engine`` itself holds: its pool's sandboxes and the images' shared roots, no execution's."""
    return lambda: engine.pooled_sandbox_ids() | engine.shared_root_keys()


async def finish_cleanups(owner: Engine | SandboxPool) -> None:
    """Wait for the sandbox removals ``owner`` (an engine, or a bare pool) still runs in the background."""
    await (owner.drain() if isinstance(owner, Engine) else owner._cleanups.drain())


async def leftovers_of(engine: Engine, containerd: ContainerdClient, config: Config) -> Leftovers:
    """Once the engine's removals are done: what the tests' daemons left, the pool's own sandboxes aside."""
    await finish_cleanups(engine)
    return await find_leftovers(containerd, state_dirs(config), keep=pooled(engine))


async def assert_nothing_left(engine: Engine, containerd: ContainerdClient, config: Config) -> None:
    """No container, task, snapshot, lease, mount, workspace, FIFO or process is left, but the pool's."""
    leftovers = await leftovers_of(engine, containerd, config)
    assert leftovers.is_empty(), leftovers


async def run_ctr(config: Config, *args: str) -> str:
    """Run ctr against ``config``'s containerd and namespace; fail on a non-zero exit; return its stdout."""
    process = await asyncio.create_subprocess_exec(
        "ctr", "--address", config.containerd.address, "--namespace", config.containerd.namespace, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()
