"""The aiohttp application: an app factory that only wires, and one cleanup context per resource."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import AsyncIterator

from aiohttp import web

from sandboxd.api import handlers, openapi
from sandboxd.api.auth import KeyRing
from sandboxd.api.middleware import auth_middleware, error_middleware
from sandboxd.api.ratelimit import RateLimiter, SharedRateLimiter
from sandboxd.api.state import (
    ADMISSION,
    CLIENT,
    CONFIG,
    ENGINE,
    HEALTH_PORT,
    KEY_RING,
    LIMITER,
    METRICS,
    NOTIFIER,
    SERVICE,
    STORE,
    SUPERVISOR,
    WEBHOOKS,
)
from sandboxd.config import Config
from sandboxd.engine.engine import Engine
from sandboxd.engine.host import StartupError, client_for, connect
from sandboxd.ops.health import HealthReporter, start_server
from sandboxd.ops.metrics import Metrics
from sandboxd.ops.notify import Notifier
from sandboxd.ops.webhooks import HttpSender
from sandboxd.service.admission import Admission
from sandboxd.service.executions import ExecutionService
from sandboxd.service.hosts import Heartbeat, host_id
from sandboxd.service.store import open_store
from sandboxd.service.webhooks import AddressPolicy, Webhooks
from sandboxd.supervisor import Supervisor

log = logging.getLogger(__name__)


async def _supervisor_ctx(app: web.Application) -> AsyncIterator[None]:
    # Each resource stops its own tasks when it closes; this catches whatever is left.
    yield
    await app[SUPERVISOR].stop()


async def _containerd_ctx(app: web.Application) -> AsyncIterator[None]:
    app[NOTIFIER].status(f"connecting to containerd at {app[CONFIG].containerd.address}")
    client = client_for(app[CONFIG], app[METRICS].containerd_error)
    app[CLIENT] = client
    try:
        await connect(client)
        yield
    finally:
        await client.close()


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = await Engine.open(app[CONFIG], app[CLIENT], app[METRICS], reconcile_leftovers=True)
    for language in engine.languages():
        if language.available:
            log.info("runtime %s: %s", language.runtime, language.version_string)
        else:
            log.warning("runtime %s unavailable: %s", language.runtime, language.reason)
    app[ENGINE] = engine
    app[METRICS].track_pool(engine.pool_runtimes(), engine.idle_sandboxes)
    engine.start(app[SUPERVISOR])
    try:
        yield
    finally:
        await engine.close()


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = await open_store(app[CONFIG], host_id(app[CONFIG]))
    app[STORE] = store
    if store.shared:  # several hosts: one bucket per key, in the store they share
        app[LIMITER] = SharedRateLimiter(store)
    yield
    await store.close()


async def _webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    policy = AddressPolicy.from_config(config.webhooks)
    sender = HttpSender(policy, config.webhooks)
    webhooks = Webhooks(
        app[STORE],
        sender,
        policy,
        settings=config.webhooks,
        secret_for=config.webhook_secret,
        observer=app[METRICS],
        poll=config.store.poll_seconds,
    )
    app[WEBHOOKS] = webhooks
    delivering = app[SUPERVISOR].start("webhook deliveries", webhooks.deliver_forever)
    try:
        yield
        # The service, which wakes it, has stopped (cleanup runs in reverse). What is still due is
        # made at the next start, or at once by another host: the claims are given back.
        await delivering.stop()
        await webhooks.release()
    finally:
        await sender.close()


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    limits = app[CONFIG].limits
    service = ExecutionService(
        app[ENGINE],
        app[STORE],
        app[ADMISSION],
        app[SUPERVISOR],
        app[METRICS],
        webhooks=app[WEBHOOKS],
        async_queue=limits.async_queue,
        retention=dt.timedelta(hours=limits.retention_hours),
        poll=app[CONFIG].store.poll_seconds,
        pending_writes=app[CONFIG].store.pending_writes,
        event_streams=limits.event_streams,
        heartbeat=app[CONFIG].server.heartbeat_seconds,
    )
    app[SERVICE] = service
    store = app[STORE]
    app[METRICS].track_store(lambda: store.available, lambda: service.pending_writes)
    app[METRICS].track_event_streams(lambda: service.open_streams)
    await service.recover()
    service.start()
    server = app[CONFIG].server
    heartbeat = Heartbeat(
        app[STORE],
        f"{server.host}:{server.port}",
        limits.concurrency,
        lambda: [info.runtime for info in service.languages() if info.available],
    )
    beating = app[SUPERVISOR].start("host heartbeat", heartbeat.beat_forever)
    yield
    await beating.stop()
    # The grace period began at SIGTERM (_begin_shutdown); aiohttp gave it to sync requests too.
    await service.stop()
    await app[ENGINE].drain()


async def _health_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    reporter = HealthReporter(app[ENGINE], app[SUPERVISOR], lambda: store.available)
    server, port = await start_server(reporter, app[CONFIG].health.address)
    app[HEALTH_PORT] = port
    log.info("gRPC health service on %s", app[CONFIG].health.address.rsplit(":", 1)[0] + f":{port}")
    publishing = app[SUPERVISOR].start("health", reporter.publish_forever)
    yield
    await publishing.stop()
    await reporter.servicer.enter_graceful_shutdown()
    await server.stop(grace=1)


async def _notify_ctx(app: web.Application) -> AsyncIterator[None]:
    notifier = app[NOTIFIER]
    feeding = None
    if notifier.watchdog_interval is not None:
        feeding = app[SUPERVISOR].start("watchdog", notifier.keep_watchdog_fed)
    yield
    if feeding is not None:
        await feeding.stop()


async def _begin_shutdown(app: web.Application) -> None:
    """SIGTERM: the sockets are closed; tell systemd, and start no more queued work.

    Running executions share one grace period, which aiohttp also gives the
    synchronous requests still in flight.
    """
    app[NOTIFIER].stopping()
    app[SERVICE].begin_shutdown(app[CONFIG].server.shutdown_grace)


def serving_status(app: web.Application) -> str:
    """The one-line status the daemon reports once it listens."""
    languages = app[SERVICE].languages()
    available = sum(1 for language in languages if language.available)
    server = app[CONFIG].server
    return f"serving on {server.host}:{server.port}; {available} of {len(languages)} runtimes available"


def create_app(config: Config) -> web.Application:
    """Wire the application; resources are opened by the cleanup contexts when it starts."""
    key_ring = KeyRing.from_config(config)
    if not key_ring:
        raise StartupError(
            "no API key is configured: add an [[api_keys]] entry to the configuration file "
            "(`sandboxd keys generate NAME` prints one), or set SANDBOXD_API_KEYS=key1,key2 for development"
        )
    app = web.Application(
        middlewares=[auth_middleware, error_middleware], client_max_size=config.server.max_body_bytes
    )
    app[CONFIG] = config
    app[KEY_RING] = key_ring
    app[LIMITER] = RateLimiter()
    app[NOTIFIER] = Notifier(os.environ)
    supervisor = Supervisor()
    app[SUPERVISOR] = supervisor
    metrics = Metrics()
    metrics.track_supervisor(supervisor)
    app[METRICS] = metrics
    admission = Admission(config.limits.concurrency, config.limits.queue)
    metrics.track_admission(
        lambda: admission.running, lambda: admission.waiting + admission.background_waiting
    )
    app[ADMISSION] = admission
    app.cleanup_ctx.extend(
        [
            _supervisor_ctx,
            _containerd_ctx,
            _engine_ctx,
            _store_ctx,
            _webhooks_ctx,
            _service_ctx,
            _health_ctx,
            _notify_ctx,
        ]
    )
    app.on_shutdown.append(_begin_shutdown)
    app.router.add_get("/healthz", handlers.healthz, allow_head=False)
    app.router.add_get("/metrics", handlers.metrics, allow_head=False)
    app.router.add_get("/api/v1/languages", handlers.languages, allow_head=False)
    app.router.add_post("/api/v1/execute", handlers.execute)
    app.router.add_post("/api/v1/execute/batch", handlers.execute_batch)
    app.router.add_post("/api/v1/execute/async", handlers.execute_async)
    app.router.add_get("/api/v1/executions/{execution_id}", handlers.get_execution, allow_head=False)
    app.router.add_delete("/api/v1/executions/{execution_id}", handlers.cancel_execution)
    app.router.add_get(
        "/api/v1/executions/{execution_id}/events", handlers.execution_events, allow_head=False
    )
    app.router.add_get(
        "/api/v1/sessions/{session_id}/executions", handlers.session_executions, allow_head=False
    )
    openapi.setup(app)
    return app
