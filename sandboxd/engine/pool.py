"""Pre-booted sandboxes per runtime, so that booting one is off the request path.

An execution takes a sandbox that is already running its agent, and the
sandbox is destroyed after that one execution, exactly as one booted on
demand: the pool changes when a sandbox is booted, never how long it lives.
How many each runtime keeps follows demand (executions in flight plus the
rate of takes times the time a boot takes), between the runtime's configured
minimum and maximum, and all of them together stay within a memory budget.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Final

import attrs

from sandboxd.config import PoolConfig
from sandboxd.containerd import ContainerdError
from sandboxd.engine.cleanups import Cleanups
from sandboxd.engine.sandbox import Sandbox, SandboxError

log = logging.getLogger(__name__)

# Until a runtime's first sandbox was measured, each one is assumed to cost this much.
_ASSUMED_COST_BYTES: Final = 64 << 20
_ASSUMED_BOOT_SECONDS: Final = 0.4
# Demand is the rate of takes over this many seconds.
_RATE_WINDOW: Final = 10.0
# Check sizes this often even when nothing happens, so that unused pools shrink.
_TICK: Final = 1.0
# Boots compete with executions for the CPU; a failed boot is retried after a pause.
_PARALLEL_BOOTS: Final = 2
_RETRY_AFTER_FAILURE: Final = 5.0
_BOOT_DEFERRAL: Final = 2.0


@attrs.define
class _Idle:
    sandbox: Sandbox
    chain_id: str
    cost_bytes: int


@attrs.define
class _Demand:
    """What one runtime's executions asked for lately."""

    in_use: int = 0
    takes: collections.deque[float] = attrs.Factory(collections.deque)
    # (time, executions in flight) at each take, for the peak over the pool's ``idle_seconds``.
    peaks: collections.deque[tuple[float, int]] = attrs.Factory(collections.deque)
    boot_seconds: float = _ASSUMED_BOOT_SECONDS
    cost_bytes: int = _ASSUMED_COST_BYTES
    failed_at: float = -math.inf


# Boots a sandbox of a runtime with the given id; returns it with the chain ID of the
# image it runs, or None when the runtime cannot run now.
BootFunction = Callable[[str, str], Awaitable[tuple[Sandbox, str] | None]]
MeasureFunction = Callable[[Sandbox], Awaitable[int | None]]


class SandboxPool:
    """Idle sandboxes per runtime, kept at the size demand asks for."""

    def __init__(
        self,
        config: PoolConfig,
        runtimes: list[str],
        boot: BootFunction,
        measure: MeasureFunction,
        cleanups: Cleanups,
        *,
        quiet: Callable[[float], Awaitable[None]],
        on_take: Callable[[str, bool], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.runtimes = runtimes
        self._boot = boot
        self._measure = measure
        self._cleanups = cleanups
        self._quiet = quiet
        self._on_take = on_take
        self._clock = clock
        self._idle: dict[str, collections.deque[_Idle]] = {name: collections.deque() for name in runtimes}
        self._booting: dict[str, int] = dict.fromkeys(runtimes, 0)
        self._booting_ids: set[str] = set()
        self._demand: dict[str, _Demand] = {name: _Demand() for name in runtimes}
        self._boots: set[asyncio.Task[None]] = set()
        self._boot_slots = asyncio.Semaphore(_PARALLEL_BOOTS)
        self._wake = asyncio.Event()

    # -- what executions use ------------------------------------------------------------

    def take(self, runtime: str, chain_id: str) -> Sandbox | None:
        """An idle sandbox of ``runtime`` running image ``chain_id``, or None (boot one then)."""
        now = self._clock()
        demand = self._demand.setdefault(runtime, _Demand())
        demand.in_use += 1
        demand.takes.append(now)
        demand.peaks.append((now, demand.in_use))
        self._wake.set()
        idle = self._idle.setdefault(runtime, collections.deque())
        while idle:
            found = idle.popleft()
            if found.chain_id == chain_id and found.sandbox.alive:
                self._on_take(runtime, True)
                return found.sandbox
            # Its image was rebuilt, or its sandbox died while idle.
            self._cleanups.destroy_in_background(found.sandbox)
        self._on_take(runtime, False)
        return None

    def expect(self, runtime: str, count: int) -> None:
        """``count`` executions of ``runtime`` are about to come (a batch): size for them now."""
        demand = self._demand.setdefault(runtime, _Demand())
        demand.peaks.append((self._clock(), demand.in_use + count))
        self._wake.set()

    def release(self, runtime: str) -> None:
        """An execution of ``runtime`` (pooled sandbox or not) has ended."""
        self._demand[runtime].in_use -= 1
        self._wake.set()

    # -- sizes --------------------------------------------------------------------------

    def desired(self, runtime: str) -> int:
        """How many idle sandboxes ``runtime`` should have now."""
        now = self._clock()
        demand = self._demand[runtime]
        while demand.takes and demand.takes[0] < now - _RATE_WINDOW:
            demand.takes.popleft()
        while demand.peaks and demand.peaks[0][0] < now - self.config.idle_seconds:
            demand.peaks.popleft()
        peak = max((count for _, count in demand.peaks), default=0)
        rate = len(demand.takes) / _RATE_WINDOW
        wanted = math.ceil(peak + rate * demand.boot_seconds) if peak else 0
        low, high = self.config.bounds(runtime)
        return max(low, min(high, wanted))

    def _committed_bytes(self) -> int:
        idle = sum(entry.cost_bytes for entries in self._idle.values() for entry in entries)
        booting = sum(self._demand[name].cost_bytes * count for name, count in self._booting.items())
        return idle + booting

    def idle_count(self, runtime: str) -> int:
        """Idle sandboxes of ``runtime`` ready now."""
        return len(self._idle.get(runtime, ()))

    def sandbox_ids(self) -> set[str]:
        """Every sandbox the pool holds or is booting (which reconciliation must leave alone)."""
        held = {entry.sandbox.id for entries in self._idle.values() for entry in entries}
        return held | self._booting_ids

    # -- keeping sizes ------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Boot and retire idle sandboxes as demand changes, until cancelled."""
        while True:
            self._adjust()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _TICK)

    def _adjust(self) -> None:
        now = self._clock()
        for runtime in self.runtimes:
            wanted = self.desired(runtime)
            idle = self._idle[runtime]
            while len(idle) > wanted:
                self._cleanups.destroy_in_background(idle.popleft().sandbox)
            demand = self._demand[runtime]
            if now - demand.failed_at < _RETRY_AFTER_FAILURE:
                continue
            while len(idle) + self._booting[runtime] < wanted:
                if self._committed_bytes() + demand.cost_bytes > self.config.memory_budget_mib << 20:
                    break
                self._booting[runtime] += 1
                task = asyncio.create_task(self._boot_one(runtime))
                self._boots.add(task)
                task.add_done_callback(self._boots.discard)

    async def _boot_one(self, runtime: str) -> None:
        demand = self._demand[runtime]
        sandbox_id = f"pool-{uuid.uuid4()}"
        self._booting_ids.add(sandbox_id)
        try:
            if self._idle[runtime]:
                # Not urgent while one is ready: boot once no program runs, or soon anyway.
                await self._quiet(_BOOT_DEFERRAL)
            async with self._boot_slots:
                started = self._clock()
                booted = await self._boot(runtime, sandbox_id)
                if booted is None:
                    demand.failed_at = self._clock()
                    return
                sandbox, chain_id = booted
                demand.boot_seconds = 0.7 * demand.boot_seconds + 0.3 * (self._clock() - started)
                measured = await self._measure(sandbox)
                if measured:
                    demand.cost_bytes = measured
            self._idle[runtime].append(_Idle(sandbox, chain_id, measured or demand.cost_bytes))
        except (ContainerdError, SandboxError, OSError) as error:
            demand.failed_at = self._clock()
            log.warning("pool: booting a %s sandbox failed: %s", runtime, error)
        except Exception:
            # A boot is one-shot work the pool retries by itself: log the unexpected, never lose it.
            demand.failed_at = self._clock()
            log.exception("pool: booting a %s sandbox failed unexpectedly", runtime)
        finally:
            self._booting[runtime] -= 1
            self._booting_ids.discard(sandbox_id)
            self._wake.set()

    async def close(self) -> None:
        """Stop booting and remove every idle sandbox (at shutdown; the loop is stopped already)."""
        for task in list(self._boots):
            task.cancel()
        await asyncio.gather(*self._boots, return_exceptions=True)
        idle = [entry for entries in self._idle.values() for entry in entries]
        for entries in self._idle.values():
            entries.clear()
        await asyncio.gather(*(entry.sandbox.destroy() for entry in idle))
