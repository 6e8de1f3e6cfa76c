"""Benchmark: the store's cost per execution on SQLite and PostgreSQL; how fast an idle host takes work.

In one run, against the dev set-up's containerd and a PostgreSQL (the private cluster of
`scripts/dev test`, or --postgres URL; the benchmark works in a schema of its own, dropped at
the end):

- the store's share of a sync hello: the calls a synchronous execution makes on its path
  (the rate-limit take, the record's insert, the result's write), timed in this process for
  each backend, and their difference (target: PostgreSQL at most 3 ms more than SQLite);
- end to end, a sync Python hello on a daemon with SQLite and on one with PostgreSQL,
  alternating (the sandbox's own 300 ms vary by more than the store's difference: context);
- two daemons sharing PostgreSQL, the first with its only slot busy: the time from an async
  submit at the first until the second (idle) reports it running (target p50 at most 100 ms),
  polled every 5 ms.

    sudo .venv/bin/python bench/store.py --runs 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import psycopg
from latency import BenchDaemon, Client, percentile

from sandboxd.api.auth import generate_key
from sandboxd.api.ratelimit import RateLimiter, SharedRateLimiter
from sandboxd.config import load_config
from sandboxd.models import ExecutionRequest, ExecutionResult, ExecutionStatus, Kind
from sandboxd.service.store import ExecutionStore, PostgresStore, SqliteStore

HELLO: Final = "print('hello')"
POLL: Final = 0.005


@contextlib.asynccontextmanager
async def schema(server: str) -> AsyncIterator[str]:
    """A URL whose connections see a fresh schema of the benchmark's own (dropped after)."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(server, autocommit=True) as connection:
        await connection.execute(f"CREATE SCHEMA {name}")
    try:
        separator = "&" if "?" in server else "?"
        yield f"{server}{separator}options={quote(f'-csearch_path={name}')}"
    finally:
        async with await psycopg.AsyncConnection.connect(server, autocommit=True) as connection:
            await connection.execute(f"DROP SCHEMA {name} CASCADE")


async def store_path(store: ExecutionStore, limiter: RateLimiter, runs: int) -> list[float]:
    """Seconds the store calls of one sync execution take, ``runs`` times."""
    request = ExecutionRequest(code=HELLO, language="python")
    samples = []
    for _ in range(runs):
        execution_id = str(uuid.uuid4())
        result = ExecutionResult(
            execution_id, "hello\n", "", 0, 0.01, "python", None, ExecutionStatus.COMPLETED
        )
        started = time.perf_counter()
        await limiter.take("bench", 1_000_000, 1)
        await store.insert(execution_id, "bench", Kind.SYNC, request, "python", ExecutionStatus.RUNNING)
        await store.finish(result)
        samples.append(time.perf_counter() - started)
    return samples


async def store_costs(url: str, work: Path, runs: int) -> dict[str, list[float]]:
    """The store's share of a sync execution on each backend."""
    sqlite = SqliteStore(work / "bench.sqlite3", "bench", 30.0)
    postgres = PostgresStore(url, "bench", 30.0, 4, 3.0)
    await sqlite.open()
    await postgres.open()
    try:
        await store_path(sqlite, RateLimiter(), 50)  # warm up both (prepared statements, caches)
        await store_path(postgres, SharedRateLimiter(postgres), 50)
        return {
            "sqlite": await store_path(sqlite, RateLimiter(), runs),
            "postgresql": await store_path(postgres, SharedRateLimiter(postgres), runs),
        }
    finally:
        await sqlite.close()
        await postgres.close()


def daemon(base: Any, name: str, work: Path, key: str, *, store: str, concurrency: int) -> BenchDaemon:
    """A benchmark daemon with ``store`` as its store URL and ``concurrency`` slots."""
    settings = {
        "limits": {"concurrency": str(concurrency), "queue": "256"},
        "pool": {"max": "10"},
        "store": {"url": f'"{store}"', "host_id": f'"bench-{name}"'},
    }
    made = BenchDaemon(base, name, work=work, settings=settings)
    made.key = key
    return made


async def end_to_end(
    session: aiohttp.ClientSession, sqlite: BenchDaemon, postgres: BenchDaemon, runs: int
) -> dict[str, list[float]]:
    """Sync hello latency on each daemon, alternating, after a warm-up."""
    clients = {"sqlite": Client(session, sqlite), "postgresql": Client(session, postgres)}
    samples: dict[str, list[float]] = {name: [] for name in clients}
    for client in clients.values():
        for _ in range(3):
            await client.execute("python", HELLO)
    for _ in range(runs):
        for name, client in clients.items():
            elapsed, _ = await client.execute("python", HELLO)
            samples[name].append(elapsed)
            await asyncio.sleep(0.3)  # the pool refills
    return samples


async def pickup(
    session: aiohttp.ClientSession, busy: BenchDaemon, idle: BenchDaemon, runs: int
) -> list[float]:
    """Seconds from an async submit at ``busy`` (its slot taken) until ``idle`` reports it running."""
    headers = {"X-API-Key": busy.key, "Content-Type": "application/json"}

    async def submit(target: BenchDaemon, code: str) -> str:
        body = {"code": code, "language": "python"}
        async with session.post(f"{target.url}/api/v1/execute/async", json=body, headers=headers) as response:
            if response.status != 202:
                raise SystemExit(f"submit: {response.status} {await response.text()}")
            return str((await response.json())["execution_id"])

    async def status(execution_id: str) -> str:
        async with session.get(f"{idle.url}/api/v1/executions/{execution_id}", headers=headers) as response:
            return str((await response.json())["status"])

    async def until(execution_id: str, done: tuple[str, ...], pause: float) -> str:
        while (state := await status(execution_id)) not in done:  # noqa: ASYNC110 -- polling the API is the point
            await asyncio.sleep(pause)
        return state

    blocker = await submit(busy, "import time; time.sleep(600)")
    await until(blocker, ("running",), 0.05)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        execution_id = await submit(busy, HELLO)
        await until(execution_id, ("running", "completed", "internal_error"), POLL)
        samples.append(time.perf_counter() - started)
        await until(execution_id, ("completed", "internal_error", "cancelled"), 0.05)
        await asyncio.sleep(1.5)  # idle again: its pool refilled
    async with session.delete(f"{idle.url}/api/v1/executions/{blocker}", headers=headers):
        pass
    return samples


def ms(value: float) -> str:
    """Seconds as milliseconds, for the table."""
    return f"{value * 1000:8.2f}"


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Everything, in one run."""
    base = load_config(Path(args.config), os.environ)
    work = Path(tempfile.mkdtemp(prefix="sandboxd-bench-store-"))
    key = generate_key()
    async with schema(args.postgres) as url:
        costs = await store_costs(url, work, args.store_runs)
        # Equal daemons for the end-to-end comparison (one slot each: the first PostgreSQL one is
        # then the busy host of the pickup runs); the idle second host starts after it.
        sqlite = daemon(base, "store-sqlite", work, key, store="sqlite:", concurrency=1)
        first = daemon(base, "store-pg-a", work, key, store=url, concurrency=1)
        second = daemon(base, "store-pg-b", work, key, store=url, concurrency=1)
        try:
            sqlite.start()
            first.start()
            await asyncio.sleep(3)  # pools filled
            async with aiohttp.ClientSession() as session:
                latency = await end_to_end(session, sqlite, first, args.runs)
                sqlite.stop()
                second.start()
                await asyncio.sleep(3)
                picked = await pickup(session, first, second, args.runs)
        finally:
            for made in (sqlite, first, second):
                made.stop()
    return {"store": costs, "sync_hello": latency, "pickup": picked}


def main() -> int:
    """Run the benchmark; print the table; write bench/results/store.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="/var/lib/sandboxd-dev/config.toml")
    parser.add_argument("--postgres", default=os.environ.get("SANDBOXD_TEST_POSTGRES_URL"))
    parser.add_argument("--runs", type=int, default=20, help="sync hellos per daemon, and async pickups")
    parser.add_argument("--store-runs", type=int, default=500, help="store call sequences per backend")
    args = parser.parse_args()
    if not args.postgres:
        parser.error("--postgres URL (or SANDBOXD_TEST_POSTGRES_URL) is needed")
    results = asyncio.run(measure(args))
    store, hello, picked = results["store"], results["sync_hello"], results["pickup"]
    p50 = {name: statistics.median(samples) for name, samples in store.items()}
    e2e = {name: statistics.median(samples) for name, samples in hello.items()}
    print(f"{'':44}{'SQLite':>10}{'PostgreSQL':>12}{'added':>10}  (ms)")
    print(f"{'store calls of a sync execution, p50':44}{ms(p50['sqlite']):>10}{ms(p50['postgresql']):>12}"
          f"{ms(p50['postgresql'] - p50['sqlite']):>10}  target <= 3")  # fmt: skip
    print(f"{'store calls of a sync execution, p95':44}{ms(percentile(store['sqlite'], 0.95)):>10}"
          f"{ms(percentile(store['postgresql'], 0.95)):>12}")  # fmt: skip
    print(f"{'sync Python hello end to end, p50':44}{ms(e2e['sqlite']):>10}{ms(e2e['postgresql']):>12}"
          f"{ms(e2e['postgresql'] - e2e['sqlite']):>10}  (sandbox noise dominates)")  # fmt: skip
    print(f"{'async submit -> running on idle 2nd host':44}{'':>10}{ms(statistics.median(picked)):>12}"
          f"{'':>10}  p50, target <= 100; p95 {ms(percentile(picked, 0.95)).strip()}")  # fmt: skip
    out = Path(__file__).parent / "results" / "store.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
