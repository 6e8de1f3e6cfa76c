"""HTTP handlers: parse, hand to the engine, serialize. Nothing else."""

from __future__ import annotations

import json

from aiohttp import web

from sandboxd.keys import ADMISSION, ENGINE
from sandboxd.models import ExecutionRequest
from sandboxd.validation import ValidationError, converter, structure


async def read_json(request: web.Request) -> object:
    """The request body as JSON; 415 for another content type, 400 for malformed JSON."""
    if request.content_type not in ("application/json", "application/octet-stream") and request.body_exists:
        raise web.HTTPUnsupportedMediaType(reason="Content-Type must be application/json")
    body = await request.read()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValidationError([f"Invalid JSON body: {error}"]) from error


async def execute(request: web.Request) -> web.Response:
    """POST /api/v1/execute: run one snippet and return its result."""
    execution = structure(await read_json(request), ExecutionRequest)
    engine = request.app[ENGINE]
    plan = engine.plan(execution)
    async with request.app[ADMISSION].slot():
        result = await engine.execute(plan)
    return web.json_response(converter.unstructure(result))


async def languages(request: web.Request) -> web.Response:
    """GET /api/v1/languages: every runtime, its version and whether it is available."""
    return web.json_response(converter.unstructure(request.app[ENGINE].languages()))


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: liveness of the HTTP server."""
    return web.json_response({"status": "ok"})
