"""Typed slots of the aiohttp application's and requests' state (``web.AppKey``, ``web.RequestKey``)."""

from __future__ import annotations

from aiohttp import web

from sandboxd.api.auth import Identity, KeyRing
from sandboxd.api.ratelimit import Decision, RateLimiter
from sandboxd.config import Config
from sandboxd.containerd import ContainerdClient
from sandboxd.engine.engine import Engine
from sandboxd.ops.metrics import Metrics
from sandboxd.ops.notify import Notifier
from sandboxd.service.admission import Admission
from sandboxd.service.executions import ExecutionService
from sandboxd.service.store import ExecutionStore
from sandboxd.service.webhooks import Webhooks
from sandboxd.supervisor import Supervisor

CONFIG = web.AppKey("config", Config)
KEY_RING = web.AppKey("key_ring", KeyRing)
LIMITER = web.AppKey("limiter", RateLimiter)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
CLIENT = web.AppKey("client", ContainerdClient)
ENGINE = web.AppKey("engine", Engine)
ADMISSION = web.AppKey("admission", Admission)
STORE = web.AppKey("store", ExecutionStore)
WEBHOOKS = web.AppKey("webhooks", Webhooks)
SERVICE = web.AppKey("service", ExecutionService)
HEALTH_PORT = web.AppKey("health_port", int)
NOTIFIER = web.AppKey("notifier", Notifier)
METRICS = web.AppKey("metrics", Metrics)

IDENTITY = web.RequestKey("identity", Identity)
RATE = web.RequestKey("rate", Decision)
