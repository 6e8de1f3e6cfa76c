"""Per-key token buckets: executions per minute, with a burst of one minute's worth."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import attrs


@attrs.frozen
class Decision:
    """The outcome of taking tokens: whether allowed, and what the rate-limit headers say."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: int


@attrs.define
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """One token bucket per key; a key's bucket holds ``per_minute`` tokens and refills continuously."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _refill(self, key: str, per_minute: int) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.setdefault(key, _Bucket(tokens=float(per_minute), updated=now))
        bucket.tokens = min(float(per_minute), bucket.tokens + (now - bucket.updated) * per_minute / 60)
        bucket.updated = now
        return bucket

    def take(self, key: str, per_minute: int, cost: int) -> Decision:
        """Take ``cost`` tokens if the bucket holds them all; otherwise take none."""
        bucket = self._refill(key, per_minute)
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return Decision(True, per_minute, math.floor(bucket.tokens), 0)
        wait = (cost - bucket.tokens) * 60 / per_minute
        return Decision(False, per_minute, math.floor(bucket.tokens), max(1, math.ceil(wait)))

    def peek(self, key: str, per_minute: int) -> Decision:
        """The bucket's state without taking anything."""
        bucket = self._refill(key, per_minute)
        return Decision(True, per_minute, math.floor(bucket.tokens), 0)
