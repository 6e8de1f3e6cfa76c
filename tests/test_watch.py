"""The containerd watch's state changes, with a stand-in client (pure logic; the outage test is real)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sandboxd.containerd import ContainerdError, UnavailableError, Version
from sandboxd.engine.watch import SLOW_PINGS, ContainerdUnavailableError, ContainerdWatch


class FlakyContainerd:
    """Answers version() or fails, as the test says."""

    def __init__(self) -> None:
        self.up = True
        self.slow = False
        self.pings = 0
        self._pinged = asyncio.Event()

    async def until_pinged(self, count: int) -> None:
        """Return once ``count`` pings have come since the count was last set."""
        while self.pings < count:
            self._pinged.clear()
            await self._pinged.wait()

    async def version(self, *, timeout: float) -> Version:
        """Answer, or fail as containerd's socket would, or as a call that had no answer in time."""
        self.pings += 1
        self._pinged.set()
        if not self.up:
            raise UnavailableError("Version", "connection refused")
        if self.slow:
            raise ContainerdError("Version", "Deadline Exceeded")
        return Version(version="1.6", revision="test")


async def test_down_then_back_reconciles_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed ping makes require() refuse; recovery runs the reconciliation before require() passes."""
    monkeypatch.setattr("sandboxd.engine.watch.PING_INTERVAL", 0.01)
    client = FlakyContainerd()
    recovered: list[bool] = []

    async def on_recovery() -> None:
        recovered.append(watch.available)

    watch = ContainerdWatch(client, on_recovery)  # type: ignore[arg-type]
    pinging = asyncio.ensure_future(watch.run_forever())
    try:
        watch.require()
        client.up = False
        await asyncio.sleep(0.05)
        with pytest.raises(ContainerdUnavailableError, match="connection refused"):
            watch.require()
        client.up = True
        await asyncio.wait_for(watch.wait_available(), 1)
        watch.require()
        assert recovered == [False]
    finally:
        pinging.cancel()


def test_report_marks_unavailable_at_once() -> None:
    """An error a caller saw marks containerd unavailable before the next ping."""
    watch = ContainerdWatch(None, lambda: asyncio.sleep(0))  # type: ignore[arg-type]
    error: Any = UnavailableError("Tasks/Create", "socket gone")
    watch.report(error)
    with pytest.raises(ContainerdUnavailableError, match="socket gone"):
        watch.require()


async def test_a_slow_containerd_is_unavailable_only_when_slow_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pings without an answer in time mark containerd unavailable only at the SLOW_PINGSth in a row."""
    monkeypatch.setattr("sandboxd.engine.watch.PING_INTERVAL", 0.01)
    client = FlakyContainerd()

    async def on_recovery() -> None:
        """Nothing to reconcile here."""

    watch = ContainerdWatch(client, on_recovery)  # type: ignore[arg-type]
    pinging = asyncio.ensure_future(watch.run_forever())
    try:
        await asyncio.sleep(0.03)
        client.slow, client.pings = True, 0
        # A ping's answer is handled before the next step of this test runs.
        await client.until_pinged(SLOW_PINGS - 1)
        watch.require()  # slow, not yet for long
        await client.until_pinged(SLOW_PINGS)
        with pytest.raises(ContainerdUnavailableError, match="Deadline Exceeded"):
            watch.require()
        client.slow = False
        await asyncio.wait_for(watch.wait_available(), 1)
        watch.require()
    finally:
        pinging.cancel()
