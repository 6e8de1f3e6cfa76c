"""The aiohttp application: typed app state, one cleanup context per resource, and the routes."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import AsyncIterator

from aiohttp import web

from sandboxd.api import handlers, openapi
from sandboxd.api.auth import KeyRing
from sandboxd.api.middleware import auth_middleware, error_middleware
from sandboxd.api.ratelimit import RateLimiter
from sandboxd.api.state import (
    ADMISSION,
    CLIENT,
    CONFIG,
    ENGINE,
    HEALTH_PORT,
    KEYS,
    LIMITER,
    NOTIFIER,
    SERVICE,
    STORE,
    TELEMETRY,
)
from sandboxd.config import Config
from sandboxd.engine.cleanups import drain_cleanups
from sandboxd.engine.host import StartupError, build_engine, client_for, connect
from sandboxd.engine.orphans import reap_forever, reap_orphaned_shims
from sandboxd.engine.pool import SandboxPool
from sandboxd.ops.health import HealthReporter, start_server
from sandboxd.ops.metrics import Telemetry
from sandboxd.ops.notify import Notifier
from sandboxd.service.admission import Admission
from sandboxd.service.executions import ExecutionService
from sandboxd.service.store import ExecutionStore

log = logging.getLogger(__name__)


async def _containerd_ctx(app: web.Application) -> AsyncIterator[None]:
    app[NOTIFIER].status(f"connecting to containerd at {app[CONFIG].containerd.address}")
    client = client_for(app[CONFIG], app[TELEMETRY].containerd_error)
    app[CLIENT] = client
    try:
        await connect(client)
        yield
    finally:
        await client.close()


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = await build_engine(app[CONFIG], app[CLIENT], reconcile_leftovers=True)
    for language in engine.languages():
        if language.available:
            log.info("runtime %s: %s", language.language, language.version)
        else:
            log.warning("runtime %s unavailable: %s", language.language, language.reason)
    app[ENGINE] = engine
    pooling = None
    pool_config = app[CONFIG].pool
    names = [runtime.name for runtime in engine.runtimes]
    unknown = sorted(set(pool_config.runtimes) - set(names))
    if unknown:
        raise StartupError(f"pool.runtimes: no such runtime: {', '.join(unknown)}")
    if pool_config.enabled:
        engine.pool = SandboxPool(
            pool_config, names, engine.boot_for_pool, engine.sandbox_memory, quiet=engine.housekeeping.quiet
        )
        pooling = asyncio.create_task(engine.pool.run_forever(), name="sandbox pool")
        app[TELEMETRY].track_pool(engine.pool)
    engine.on_teardown = app[TELEMETRY].teardown.observe
    limits = app[CONFIG].limits
    admission = Admission(limits.concurrency, limits.queue)
    app[ADMISSION] = admission
    app[TELEMETRY].track_admission(
        lambda: admission.running, lambda: admission.waiting + admission.background_waiting
    )
    watching = asyncio.create_task(engine.watch.run_forever(), name="containerd watch")
    namespace = app[CLIENT].namespace
    reaping = asyncio.create_task(reap_forever(namespace), name="orphaned shim reaper")
    yield
    watching.cancel()
    reaping.cancel()
    if pooling is not None:
        pooling.cancel()
        await asyncio.gather(pooling, return_exceptions=True)
    await drain_cleanups()
    await asyncio.to_thread(reap_orphaned_shims, namespace)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = ExecutionStore(app[CONFIG].paths.data / "executions.sqlite3")
    await store.open()
    app[STORE] = store
    yield
    await store.close()


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    limits = app[CONFIG].limits
    service = ExecutionService(
        app[ENGINE],
        app[STORE],
        app[ADMISSION],
        async_queue=limits.async_queue,
        retention=dt.timedelta(hours=limits.retention_hours),
        telemetry=app[TELEMETRY],
    )
    app[SERVICE] = service
    await service.recover()
    purging = asyncio.create_task(service.purge_forever())
    yield
    purging.cancel()
    # The grace period began at SIGTERM (_begin_shutdown); aiohttp gave it to sync requests too.
    await service.stop()
    await drain_cleanups()


async def _notify_ctx(app: web.Application) -> AsyncIterator[None]:
    feeding = asyncio.create_task(app[NOTIFIER].keep_watchdog_fed(), name="watchdog")
    yield
    feeding.cancel()


async def _begin_shutdown(app: web.Application) -> None:
    """SIGTERM: the sockets are closed; tell systemd, and start no more queued work.

    Running executions share one grace period, which aiohttp also gives the
    synchronous requests still in flight.
    """
    app[NOTIFIER].stopping()
    app[SERVICE].begin_shutdown(app[CONFIG].server.shutdown_grace)


def serving_status(app: web.Application) -> str:
    """The one-line status the daemon reports once it listens."""
    languages = app[ENGINE].languages()
    available = sum(1 for language in languages if language.available)
    server = app[CONFIG].server
    return f"serving on {server.host}:{server.port}; {available} of {len(languages)} runtimes available"


async def _health_ctx(app: web.Application) -> AsyncIterator[None]:
    reporter = HealthReporter(app[ENGINE])
    server, port = await start_server(reporter, app[CONFIG].health.address)
    app[HEALTH_PORT] = port
    log.info("gRPC health service on %s", app[CONFIG].health.address.rsplit(":", 1)[0] + f":{port}")
    publishing = asyncio.create_task(reporter.publish_forever(), name="health")
    yield
    publishing.cancel()
    await reporter.servicer.enter_graceful_shutdown()
    await server.stop(grace=1)


def create_app(config: Config) -> web.Application:
    """Wire the application; resources are opened by the cleanup contexts when it starts."""
    keys = KeyRing.from_config(config)
    if not keys:
        raise StartupError(
            "no API key is configured: add an [[api_keys]] entry to the configuration file "
            "(`sandboxd keys generate NAME` prints one), or set SANDBOXD_API_KEYS=key1,key2 for development"
        )
    app = web.Application(
        middlewares=[auth_middleware, error_middleware], client_max_size=config.server.max_body_bytes
    )
    app[CONFIG] = config
    app[KEYS] = keys
    app[LIMITER] = RateLimiter()
    app[NOTIFIER] = Notifier(os.environ)
    app[TELEMETRY] = Telemetry()
    app.cleanup_ctx.extend([_containerd_ctx, _engine_ctx, _store_ctx, _service_ctx, _health_ctx, _notify_ctx])
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
        "/api/v1/sessions/{session_id}/executions", handlers.session_executions, allow_head=False
    )
    openapi.setup(app)
    return app
