"""Prometheus metrics and the one log line per execution: the engine's and the service's observer."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Final

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sandboxd.engine.engine import Timings
from sandboxd.models import ExecutionResult, Kind
from sandboxd.ops.logging import EXECUTION_FIELDS
from sandboxd.service.store import DeliveryState
from sandboxd.supervisor import Supervisor

log = logging.getLogger("sandboxd.executions")

_SECONDS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The daemon's metrics, in a registry of its own (several apps may live in one process).

    It observes the engine (``sandbox_removed``, ``pool_take``), the service (``finished``) and
    the webhook deliveries (``webhook_attempt``, ``webhook_done``);
    gauges read their state when scraped.
    """

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
        self.pool_takes = Counter(
            "sandboxd_pool_takes",
            "Executions by whether a pre-booted sandbox was ready (hit) or one was booted (miss)",
            ["result"],
            registry=registry,
        )
        self.containerd_errors = Counter(
            "sandboxd_containerd_errors", "Failed containerd calls by method", ["method"], registry=registry
        )
        self.webhook_attempts = Counter(
            "sandboxd_webhook_attempts",
            "Webhook delivery attempts by result: delivered, http_error (a non-2xx answer), network_error, "
            "refused (by the address policy, or no secret), internal_error",
            ["result"],
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "sandboxd_webhook_deliveries",
            "Webhook deliveries done for good, by state: delivered, or failed (given up)",
            ["state"],
            registry=registry,
        )

    def track_admission(self, running: Callable[[], int], waiting: Callable[[], int]) -> None:
        """Read the in-flight and queue gauges from the admission control when scraped."""
        self.in_flight.set_function(lambda: float(running()))
        self.queue_depth.set_function(lambda: float(waiting()))

    def track_pool(self, runtimes: list[str], idle: Callable[[str], int]) -> None:
        """Read each pooled runtime's idle sandboxes (``idle(runtime)``) when scraped."""
        gauge = Gauge(
            "sandboxd_pool_idle_sandboxes", "Pre-booted sandboxes ready", ["language"], registry=self.registry
        )
        for language in runtimes:
            gauge.labels(language=language).set_function(functools.partial(idle, language))

    def track_store(self, available: Callable[[], bool], pending: Callable[[], int]) -> None:
        """Read whether the store answers, and how many results wait in memory for it, when scraped."""
        up = Gauge("sandboxd_store_available", "1 while the execution store answers", registry=self.registry)
        up.set_function(lambda: float(available()))
        kept = Gauge(
            "sandboxd_store_pending_writes",
            "Results kept in memory until the store answers again",
            registry=self.registry,
        )
        kept.set_function(lambda: float(pending()))

    def track_event_streams(self, open_streams: Callable[[], int]) -> None:
        """Read how many event streams (live output) this host serves, when scraped."""
        gauge = Gauge("sandboxd_event_streams", "Event streams open on this host", registry=self.registry)
        gauge.set_function(lambda: float(open_streams()))

    def track_supervisor(self, supervisor: Supervisor) -> None:
        """Read how many background tasks are down (waiting to be restarted) when scraped."""
        down = Gauge(
            "sandboxd_background_tasks_down",
            "Background tasks that failed and wait to be restarted",
            registry=self.registry,
        )
        down.set_function(lambda: float(len(supervisor.down)))

    def pool_take(self, runtime: str, hit: bool) -> None:
        """Count an execution that found a pre-booted sandbox (hit) or had to boot one (miss)."""
        self.pool_takes.labels(result="hit" if hit else "miss").inc()

    def sandbox_removed(self, seconds: float) -> None:
        """Observe how long removing a used sandbox took."""
        self.teardown.observe(seconds)

    def containerd_error(self, method: str) -> None:
        """Count a failed containerd call."""
        self.containerd_errors.labels(
            method=method.rsplit("/", 2)[-2] + "/" + method.rsplit("/", 1)[-1]
        ).inc()

    def webhook_attempt(self, result: str) -> None:
        """Count a webhook delivery attempt by its result."""
        self.webhook_attempts.labels(result=result).inc()

    def webhook_done(self, state: DeliveryState) -> None:
        """Count a webhook delivery that is done: delivered, or given up."""
        self.webhook_deliveries.labels(state=str(state)).inc()

    def finished(
        self, result: ExecutionResult, kind: Kind, timings: Timings, *, debug_fields: dict[str, Any]
    ) -> None:
        """Count an execution and log its one line (code, stdin and output only at debug level)."""
        self.executions.labels(language=result.language, status=result.status).inc()
        self.queue_wait.observe(timings.queue_wait)
        if timings.setup:
            self.setup.observe(timings.setup)
            self.run.observe(timings.run)
        fields: dict[str, Any] = {
            "execution_id": result.execution_id,
            "kind": str(kind),
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
