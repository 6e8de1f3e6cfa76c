"""Typed keys for the aiohttp application's state."""

from __future__ import annotations

from aiohttp import web

from sandboxd.admission import Admission
from sandboxd.config import Config, KeyRing
from sandboxd.containerd import ContainerdClient
from sandboxd.engine import Engine

CONFIG = web.AppKey("config", Config)
KEYS = web.AppKey("keys", KeyRing)
CLIENT = web.AppKey("client", ContainerdClient)
ENGINE = web.AppKey("engine", Engine)
ADMISSION = web.AppKey("admission", Admission)
