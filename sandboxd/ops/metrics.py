"""Prometheus metrics and the one log line per execution, fed by the engine, the service and the API."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Final

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sandboxd.engine.engine import Timings
from sandboxd.engine.pool import SandboxPool
from sandboxd.models import ExecutionResult
from sandboxd.ops.logging import EXECUTION_FIELDS

log = logging.getLogger("sandboxd.executions")

_SECONDS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Telemetry:
    """The daemon's metrics, in a registry of its own (several apps may live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.executions = Counter(
            "sandboxd_executions",
            "Executions by language and final status",
            ["language", "status"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "sandboxd_queue_wait_seconds",
            "Time waiting for an execution slot",
            buckets=_SECONDS,
            registry=registry,
        )
        self.setup = Histogram(
            "sandboxd_sandbox_setup_seconds",
            "Time getting a sandbox ready (pooled or booted) and writing the code into it",
            buckets=_SECONDS,
            registry=registry,
        )
        self.run = Histogram(
            "sandboxd_run_seconds",
            "Time the program ran (compile included)",
            buckets=_SECONDS,
            registry=registry,
        )
        self.teardown = Histogram(
            "sandboxd_sandbox_teardown_seconds",
            "Time removing a sandbox (after its execution answered)",
            buckets=_SECONDS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "sandboxd_executions_in_flight", "Executions holding a slot", registry=registry
        )
        self.queue_depth = Gauge("sandboxd_queue_depth", "Executions waiting for a slot", registry=registry)
        self.rate_limited = Counter(
            "sandboxd_rate_limited_requests", "Requests refused by a key's rate limit", registry=registry
        )
        self.containerd_errors = Counter(
            "sandboxd_containerd_errors", "Failed containerd calls by method", ["method"], registry=registry
        )

    def track_admission(self, running: Callable[[], int], waiting: Callable[[], int]) -> None:
        """Read the in-flight and queue gauges from the admission control when scraped."""
        self.in_flight.set_function(lambda: float(running()))
        self.queue_depth.set_function(lambda: float(waiting()))

    def track_pool(self, pool: SandboxPool) -> None:
        """Count pooled and booted takes, and read each runtime's idle sandboxes when scraped."""
        idle = Gauge(
            "sandboxd_pool_idle_sandboxes", "Pre-booted sandboxes ready", ["language"], registry=self.registry
        )
        for language in pool.runtimes:
            idle.labels(language=language).set_function(functools.partial(pool.idle_count, language))
        takes = Counter(
            "sandboxd_pool_takes",
            "Executions by whether a pre-booted sandbox was ready (hit) or one was booted (miss)",
            ["result"],
            registry=self.registry,
        )
        pool.on_take = lambda hit: takes.labels(result="hit" if hit else "miss").inc()

    def containerd_error(self, method: str) -> None:
        """Count a failed containerd call."""
        self.containerd_errors.labels(
            method=method.rsplit("/", 2)[-2] + "/" + method.rsplit("/", 1)[-1]
        ).inc()

    def finished(
        self, result: ExecutionResult, kind: str, timings: Timings, *, debug_fields: dict[str, Any]
    ) -> None:
        """Count an execution and log its one line (code, stdin and output only at debug level)."""
        self.executions.labels(language=result.language, status=result.status).inc()
        self.queue_wait.observe(timings.queue_wait)
        if timings.setup:
            self.setup.observe(timings.setup)
            self.run.observe(timings.run)
        fields: dict[str, Any] = {
            "execution_id": result.execution_id,
            "kind": kind,
            "language": result.language,
            "status": str(result.status),
            "exit_code": result.exit_code,
            **{f"{name}_seconds": round(value, 4) for name, value in attrs.asdict(timings).items()},
        }
        if log.isEnabledFor(logging.DEBUG):
            log.debug("execution finished", extra={EXECUTION_FIELDS: {**fields, **debug_fields}})
        else:
            log.info("execution finished", extra={EXECUTION_FIELDS: fields})

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)
