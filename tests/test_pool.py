"""The pool of pre-booted sandboxes: sizing by demand and budget (pure logic), and its use for real."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sandboxd.config import PoolConfig, PoolSizeConfig
from sandboxd.engine.agent import OutputListener
from sandboxd.engine.cleanups import Cleanups
from sandboxd.engine.engine import Engine, Plan, Timings
from sandboxd.engine.housekeeping import Housekeeping
from sandboxd.engine.pool import SandboxPool
from sandboxd.engine.sandbox import Sandbox
from sandboxd.models import ExecutionResult
from tests.helpers import Client, Clock, batch, finish_cleanups, is_quiet, metrics, poll, run


class FakeSandbox:
    """Stands in for a booted sandbox: the pool only asks whether it lives and destroys it."""

    def __init__(self, sandbox_id: str) -> None:
        self.id = sandbox_id
        self.alive = True
        self.destroyed = False

    async def destroy(self) -> None:
        """Note that the pool destroyed it."""
        self.destroyed = True


async def no_quiet_needed(at_most: float) -> None:
    """Housekeeping never waits in these tests."""


def make_pool(
    config: PoolConfig, clock: Clock, chain: str = "sha256:a", cost: int = 50 << 20
) -> tuple[SandboxPool, list[FakeSandbox]]:
    """A pool over fake sandboxes; the list collects every sandbox it booted."""
    booted: list[FakeSandbox] = []

    async def boot(runtime: str, sandbox_id: str) -> tuple[Sandbox, str] | None:
        sandbox = FakeSandbox(sandbox_id)
        booted.append(sandbox)
        return sandbox, chain  # type: ignore[return-value]

    async def measure(sandbox: Sandbox) -> int | None:
        return cost

    pool = SandboxPool(
        config,
        ["python", "go"],
        boot,
        measure,
        Cleanups(),
        quiet=no_quiet_needed,
        on_take=lambda _runtime, _hit: None,
        clock=clock,
    )
    return pool, booted


async def settle(pool: SandboxPool) -> None:
    """Let the pool adjust and its boots finish."""
    for _ in range(5):
        pool._adjust()
        await asyncio.gather(*pool._boots)
    await finish_cleanups(pool)


async def test_unused_runtimes_keep_their_minimum() -> None:
    """With no demand a runtime keeps its configured minimum, and nothing for the others."""
    config = PoolConfig(runtimes={"python": PoolSizeConfig(min=2, max=4)})
    pool, booted = make_pool(config, Clock(1000.0))
    await settle(pool)
    assert (pool.idle_count("python"), pool.idle_count("go")) == (2, 0)
    assert len(booted) == 2


async def test_a_batch_is_booted_ahead_whole_by_default() -> None:
    """With the shipped sizes, a batch of ten expected makes the pool boot ten."""
    pool, _ = make_pool(PoolConfig(), Clock(1000.0))
    pool.expect("python", 10)
    await settle(pool)
    assert pool.idle_count("python") == 10


async def test_demand_grows_the_pool_up_to_its_maximum() -> None:
    """Executions in flight (and the rate of takes) raise the size, never past the maximum."""
    clock = Clock(1000.0)
    pool, _ = make_pool(PoolConfig(max=3), clock)
    for _ in range(5):
        assert pool.take("go", "sha256:a") is None  # empty: the caller boots on demand
    assert pool.desired("go") == 3
    await settle(pool)
    assert pool.idle_count("go") == 3
    taken: Any = pool.take("go", "sha256:a")
    assert taken.id.startswith("pool-")


async def test_the_pool_shrinks_once_demand_is_old() -> None:
    """Past idle_seconds without takes, idle sandboxes beyond the minimum are destroyed."""
    clock = Clock(1000.0)
    pool, booted = make_pool(PoolConfig(idle_seconds=60, max=2), clock)
    pool.take("python", "sha256:a")
    pool.release("python")
    await settle(pool)
    assert pool.idle_count("python") == pool.desired("python") > 0
    clock.now += 61
    await settle(pool)
    assert pool.idle_count("python") == 0
    assert all(sandbox.destroyed for sandbox in booted)


async def test_memory_budget_bounds_all_pools_together() -> None:
    """Idle and booting sandboxes together never exceed the budget, whatever the sizes ask."""
    config = PoolConfig(memory_budget_mib=120, runtimes={n: PoolSizeConfig(min=2) for n in ("python", "go")})
    pool, booted = make_pool(config, Clock(1000.0), cost=50 << 20)
    await settle(pool)
    # The first boot is charged an assumed 64 MiB, then each is charged its measured 50 MiB.
    assert pool.idle_count("python") + pool.idle_count("go") == 2
    assert len(booted) == 2


async def test_a_sandbox_of_an_older_image_or_dead_is_never_handed_out() -> None:
    """A take skips (and destroys) idle sandboxes of another image or whose sandbox died."""
    clock = Clock(1000.0)
    config = PoolConfig(runtimes={"python": PoolSizeConfig(min=2, max=2)})
    pool, booted = make_pool(config, clock)
    await settle(pool)
    booted[0].alive = False
    assert pool.take("python", "sha256:newer") is None
    await finish_cleanups(pool)
    assert all(sandbox.destroyed for sandbox in booted[:2])


async def completed(http: Client, headers: dict[str, str], code: str) -> Any:
    """One synchronous Python execution that must complete."""
    result = await run(http, headers, code)
    assert result["status"] == "completed", result
    return result


POOL_HITS = 'sandboxd_pool_takes_total{result="hit"}'


async def wait_for_idle(http: Client, runtime: str) -> None:
    """Wait until the pool has a sandbox of ``runtime`` ready, as the server's metrics tell."""
    idle = f'sandboxd_pool_idle_sandboxes{{language="{runtime}"}}'
    await poll(lambda: metrics(http), lambda found: found[idle] >= 1, f"the pool refilling {runtime}")


@pytest.mark.integration
async def test_pooled_sandboxes_serve_one_execution_each(http: Client, headers: dict[str, str]) -> None:
    """Executions run in pre-booted sandboxes; none sees what an earlier one left in /tmp or /workspace."""
    code = (
        "import os\nfor path in ('/tmp/left-behind', '/workspace/left-behind'):\n"
        "    print(os.path.exists(path))\n    open(path, 'w').write('x')\n"
    )
    await completed(http, headers, "print('demand')")
    for _ in range(3):
        await wait_for_idle(http, "python")
        hits = (await metrics(http)).get(POOL_HITS, 0.0)
        result = await completed(http, headers, code)
        assert result["stdout"] == "False\nFalse\n"
        assert (await metrics(http))[POOL_HITS] == hits + 1, "the execution did not take a pooled sandbox"


@pytest.mark.integration
async def test_a_batch_is_one_busy_stretch_for_housekeeping(
    http: Client, headers: dict[str, str], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No item of a batch starts in a quiet moment: removals and boots wait until the whole batch ran."""
    quiet_at_start: list[bool] = []
    original = engine.execute

    async def observed(
        plan: Plan, execution_id: str, *, on_output: OutputListener | None = None
    ) -> tuple[ExecutionResult, Timings]:
        quiet_at_start.append(is_quiet(engine))
        return await original(plan, execution_id, on_output=on_output)

    monkeypatch.setattr(engine, "execute", observed)
    status, results = await batch(
        http, headers, [{"code": f"print({i})", "language": "python"} for i in range(3)]
    )
    assert status == 200
    assert [item["stdout"] for item in results] == ["0\n", "1\n", "2\n"]
    assert quiet_at_start == [False, False, False]


async def test_a_batch_sizes_the_pool_ahead() -> None:
    """A batch announces its executions: the pool sizes for all of them before the first runs."""
    pool, _ = make_pool(PoolConfig(max=10), Clock(1000.0))
    pool.expect("python", 10)
    assert pool.desired("python") == 10
    await settle(pool)
    assert pool.idle_count("python") == 10


async def test_housekeeping_waits_for_a_quiet_moment_or_its_deadline() -> None:
    """Background work waits while a program runs, goes on once none does, and never past its deadline."""
    housekeeping = Housekeeping()
    await asyncio.wait_for(housekeeping.quiet(10), 1)  # nothing runs: at once
    with housekeeping.program_running():
        waiting = asyncio.ensure_future(housekeeping.quiet(10))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        started = asyncio.get_running_loop().time()
        await housekeeping.quiet(0.1)
        assert asyncio.get_running_loop().time() - started >= 0.1
    await asyncio.wait_for(waiting, 1)
