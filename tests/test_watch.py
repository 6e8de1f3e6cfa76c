"""The containerd watch's state changes, with a stand-in client (pure logic; the outage test is real)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sandboxd.containerd import UnavailableError, Version
from sandboxd.engine.watch import ContainerdUnavailableError, ContainerdWatch


class FlakyContainerd:
    """Answers version() or fails, as the test says."""

    def __init__(self) -> None:
        self.up = True

    async def version(self, *, timeout: float) -> Version:
        """Answer, or fail as containerd's socket would."""
        if not self.up:
            raise UnavailableError("Version", "connection refused")
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
