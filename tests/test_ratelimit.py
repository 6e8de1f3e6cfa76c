"""The token bucket on its own, with a fake clock: in memory, and in the shared store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sandboxd.api.ratelimit import RateLimiter, SharedRateLimiter
from sandboxd.service.store import PostgresStore
from tests.helpers import Clock


@pytest.fixture
async def postgres_store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    """A PostgreSQL store in a schema of the test's own."""
    store = PostgresStore(postgres_url, "host-a", 30.0, 4, 3.0)
    await store.open()
    yield store
    await store.close()


async def test_bucket_refills_at_the_rate() -> None:
    """60 a minute: a burst of 60, then one a second; a refusal says how long to wait."""
    clock = Clock()
    limiter = RateLimiter(clock)
    assert (await limiter.take("k", 60, 60)).allowed
    refused = await limiter.take("k", 60, 3)
    assert (refused.allowed, refused.remaining, refused.retry_after) == (False, 0, 3)
    clock.now += 3.0
    assert (await limiter.take("k", 60, 3)).allowed
    assert (await limiter.peek("k", 60)).remaining == 0


async def test_keys_have_separate_buckets() -> None:
    """One key's use does not touch another's bucket."""
    limiter = RateLimiter(Clock())
    assert (await limiter.take("a", 10, 10)).allowed
    assert not (await limiter.take("a", 10, 1)).allowed
    assert (await limiter.take("b", 10, 10)).allowed


async def test_shared_bucket_is_one_across_hosts(postgres_store: PostgresStore, postgres_url: str) -> None:
    """Two hosts' limiters on one store take from one bucket: 10 a minute is 10 in all, never more."""
    other = PostgresStore(postgres_url, "host-b", 30.0, 4, 3.0)
    await other.open()
    clock = Clock()
    try:
        first, second = SharedRateLimiter(postgres_store, clock), SharedRateLimiter(other, clock)
        decisions = await asyncio.gather(*(limiter.take("k", 10, 1) for limiter in (first, second) * 8))
        assert sum(decision.allowed for decision in decisions) == 10
        assert (await second.peek("k", 10)).remaining == 0
        refused = await first.take("k", 10, 2)
        assert (refused.allowed, refused.retry_after) == (False, 12)
        clock.now += 12
        assert (await second.take("k", 10, 2)).allowed
    finally:
        await other.close()
