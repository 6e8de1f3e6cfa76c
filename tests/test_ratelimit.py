"""The token bucket on its own, with a fake clock."""

from __future__ import annotations

from sandboxd.api.ratelimit import RateLimiter
from tests.helpers import Clock


def test_bucket_refills_at_the_rate() -> None:
    """60 a minute: a burst of 60, then one a second; a refusal says how long to wait."""
    clock = Clock()
    limiter = RateLimiter(clock)
    assert limiter.take("k", 60, 60).allowed
    refused = limiter.take("k", 60, 3)
    assert (refused.allowed, refused.remaining, refused.retry_after) == (False, 0, 3)
    clock.now = 3.0
    assert limiter.take("k", 60, 3).allowed
    assert limiter.peek("k", 60).remaining == 0


def test_keys_have_separate_buckets() -> None:
    """One key's use does not touch another's bucket."""
    limiter = RateLimiter(Clock())
    assert limiter.take("a", 10, 10).allowed
    assert not limiter.take("a", 10, 1).allowed
    assert limiter.take("b", 10, 10).allowed
