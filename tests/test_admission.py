"""Bounded concurrency with a bounded queue."""

from __future__ import annotations

import asyncio

import pytest

from sandboxd.service.admission import Admission, QueueFullError


async def test_queue_then_refuse() -> None:
    """Past the slots callers queue; past the queue they are refused at once."""
    admission = Admission(slots=1, queue=1)
    release = asyncio.Event()

    async def hold() -> None:
        async with admission.slot():
            await release.wait()

    first = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    second = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    assert (admission.running, admission.waiting) == (1, 1)
    with pytest.raises(QueueFullError):
        async with admission.slot():
            pass
    release.set()
    await asyncio.gather(first, second)
    assert (admission.running, admission.waiting) == (0, 0)
