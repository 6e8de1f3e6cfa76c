"""Per-key token buckets: executions per minute, with a burst of one minute's worth.

One host keeps its buckets in memory; several hosts sharing a PostgreSQL store keep
them in it, changed atomically, so that a key has one limit across all of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import attrs

from sandboxd.service.store import Bucket, ExecutionStore


@attrs.frozen
class Decision:
    """The outcome of taking tokens: whether allowed, and what the rate-limit headers say."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: int


def _refill(bucket: Bucket | None, per_minute: int, now: float) -> Bucket:
    """The bucket as of ``now``: full when new, refilled continuously up to ``per_minute``."""
    if bucket is None:
        return Bucket(tokens=float(per_minute), updated=now)
    elapsed = max(now - bucket.updated, 0.0)
    return Bucket(tokens=min(float(per_minute), bucket.tokens + elapsed * per_minute / 60), updated=now)


def _take(bucket: Bucket, per_minute: int, cost: int) -> tuple[Bucket, Decision]:
    """Take ``cost`` tokens if the bucket holds them all; otherwise take none."""
    if bucket.tokens >= cost:
        left = attrs.evolve(bucket, tokens=bucket.tokens - cost)
        return left, Decision(True, per_minute, math.floor(left.tokens), 0)
    wait = (cost - bucket.tokens) * 60 / per_minute
    return bucket, Decision(False, per_minute, math.floor(bucket.tokens), max(1, math.ceil(wait)))


class RateLimiter:
    """One token bucket per key, in this process's memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}

    async def take(self, key: str, per_minute: int, cost: int) -> Decision:
        """Take ``cost`` tokens if the bucket holds them all; otherwise take none."""
        bucket, decision = _take(_refill(self._buckets.get(key), per_minute, self._clock()), per_minute, cost)
        self._buckets[key] = bucket
        return decision

    async def peek(self, key: str, per_minute: int) -> Decision:
        """The bucket's state without taking anything."""
        bucket = _refill(self._buckets.get(key), per_minute, self._clock())
        return Decision(True, per_minute, math.floor(bucket.tokens), 0)


class SharedRateLimiter(RateLimiter):
    """One token bucket per key in the shared store: every host takes from the same one.

    Buckets are dated by the wall clock (hosts keep theirs synchronized, NTP), not a
    monotonic one: several machines read them.
    """

    def __init__(self, store: ExecutionStore, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self._store = store

    async def take(self, key: str, per_minute: int, cost: int) -> Decision:
        """Take ``cost`` tokens in one transaction, holding the bucket's row lock."""
        decisions: list[Decision] = []

        def change(current: Bucket | None) -> Bucket:
            bucket, decision = _take(_refill(current, per_minute, self._clock()), per_minute, cost)
            decisions.append(decision)
            return bucket

        await self._store.update_bucket(key, change)
        return decisions[-1]

    async def peek(self, key: str, per_minute: int) -> Decision:
        """The bucket's state as the store has it, without taking anything."""
        bucket = _refill(await self._store.read_bucket(key), per_minute, self._clock())
        return Decision(True, per_minute, math.floor(bucket.tokens), 0)
