"""HTTP handlers: parse, hand to the execution service, serialize. Nothing else."""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from aiohttp import web

from sandboxd.api.middleware import charge, rate_headers
from sandboxd.api.openapi import documented
from sandboxd.api.state import IDENTITY, METRICS, SERVICE
from sandboxd.engine.engine import Plan
from sandboxd.models import (
    AsyncAccepted,
    ExecutionRequest,
    ExecutionResult,
    ExecutionState,
    ExecutionStatus,
    Health,
    LanguageInfo,
    SessionPage,
)
from sandboxd.service.live import LiveEvent
from sandboxd.service.store import StoredExecution
from sandboxd.validation import InvalidFieldError, ValidationError, converter, structure

log = logging.getLogger(__name__)

MAX_PAGE: Final = 200
# What can go wrong for a route that takes an execution request in its body.
BODY_ERRORS: Final = (400, 401, 413, 415, 429, 503)
EXECUTION_ID_PARAMETER: Final = {
    "in": "path",
    "name": "execution_id",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


def json_response(value: Any, status: int = 200) -> web.Response:
    """Serialize an attrs value (or a list of them) through the one converter."""
    return web.json_response(converter.unstructure(value), status=status)


async def read_json(request: web.Request) -> object:
    """The request body as JSON; 415 for another content type, 400 for malformed JSON."""
    if request.content_type not in ("application/json", "application/octet-stream") and request.body_exists:
        raise web.HTTPUnsupportedMediaType(reason="Content-Type must be application/json")
    body = await request.read()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValidationError([f"Invalid JSON body: {error}"]) from error


def _owner(request: web.Request) -> str:
    return request[IDENTITY].name


async def _accept_one(request: web.Request, *, asynchronous: bool = False) -> Plan:
    """Read, validate and plan one execution, then charge it: an invalid request costs nothing."""
    body = structure(await read_json(request), ExecutionRequest)
    service = request.app[SERVICE]
    plan = service.plan_async(_owner(request), body) if asynchronous else service.plan(body)
    await charge(request, 1)
    return plan


@documented(
    "Run one snippet synchronously",
    ok=(200, ExecutionResult),
    body=ExecutionRequest,
    errors=BODY_ERRORS,
)
async def execute(request: web.Request) -> web.Response:
    """POST /api/v1/execute: run one snippet and return its result."""
    plan = await _accept_one(request)
    return json_response(await request.app[SERVICE].run(_owner(request), plan))


@documented(
    "Run up to 10 snippets in order",
    ok=(200, ExecutionResult),
    response_is_list=True,
    body=ExecutionRequest,
    body_is_list=True,
    errors=BODY_ERRORS,
)
async def execute_batch(request: web.Request) -> web.Response:
    """POST /api/v1/execute/batch: run up to 10 snippets in order; one result per item."""
    service = request.app[SERVICE]
    plans = service.plan_batch(await read_json(request))
    await charge(request, len(plans))
    return json_response(await service.run_batch(_owner(request), plans))


@documented(
    "Accept one snippet to run in the background",
    ok=(202, AsyncAccepted),
    body=ExecutionRequest,
    errors=BODY_ERRORS,
)
async def execute_async(request: web.Request) -> web.Response:
    """POST /api/v1/execute/async: accept one snippet and answer at once; poll for its result.

    With ``callback_url``, the result is also POSTed there once the execution has finished,
    signed with the key's webhook secret (see the README's Webhooks section).
    """
    plan = await _accept_one(request, asynchronous=True)
    execution_id = await request.app[SERVICE].submit(_owner(request), plan)
    return json_response(AsyncAccepted(execution_id=execution_id, status=ExecutionStatus.QUEUED), status=202)


def _record_response(record: StoredExecution) -> web.Response:
    if record.result is not None:
        return json_response(record.result)
    state = ExecutionState(
        execution_id=record.execution_id,
        status=record.status,
        language=record.language,
        session_id=record.session_id,
    )
    return json_response(state)


@documented(
    "An execution's status, then its full result",
    ok=(200, ExecutionResult),
    errors=(401, 404),
    parameters=[EXECUTION_ID_PARAMETER],
)
async def get_execution(request: web.Request) -> web.Response:
    """GET /api/v1/executions/{execution_id}: its status, then its full result."""
    record = await request.app[SERVICE].get(_owner(request), request.match_info["execution_id"])
    return _record_response(record)


@documented(
    "Cancel a queued or running asynchronous execution",
    ok=(200, ExecutionResult),
    errors=(401, 404, 409),
    parameters=[EXECUTION_ID_PARAMETER],
)
async def cancel_execution(request: web.Request) -> web.Response:
    """DELETE /api/v1/executions/{execution_id}: cancel a queued or running asynchronous execution."""
    record = await request.app[SERVICE].cancel(_owner(request), request.match_info["execution_id"])
    return _record_response(record)


LAST_EVENT_ID_PARAMETER: Final = {
    "in": "header",
    "name": "Last-Event-ID",
    "required": False,
    "description": "Resume after this event (the id of the last stdout or stderr event received)",
    "schema": {"type": "string", "pattern": "^[0-9]{1,9}-[0-9]{1,12}-[0-9]{1,12}-[0-9]{1,12}$"},
}
EVENTS_DESCRIPTION: Final = (
    "Server-Sent Events, each with JSON data: `status` (as GET answers while unfinished), `stdout` "
    'and `stderr` (`{"seq": n, "data": "text"}`, with an `id:` to resume from; a stream\'s pieces add '
    'up to the result\'s text), `reset` (`{"attempt": n}`: it runs again from its start; drop the output '
    "received), then `result` (as GET answers), and the stream ends. Comment lines keep an idle stream open."
)
_SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # nginx and its kind would hold the events back to fill their buffers.
    "X-Accel-Buffering": "no",
}
_HEARTBEAT: Final = b": keep-alive\n\n"


def _sse(event: LiveEvent | None) -> bytes:
    """One event in text/event-stream framing (a heartbeat comment for None); JSON keeps it on one line."""
    if event is None:
        return _HEARTBEAT
    identity = f"id: {event.event_id}\n" if event.event_id is not None else ""
    return f"{identity}event: {event.kind}\ndata: {json.dumps(event.data, ensure_ascii=False)}\n\n".encode()


@documented(
    "Follow an execution's output as it is produced (Server-Sent Events)",
    ok=(200, None),
    media_type="text/event-stream",
    ok_description=EVENTS_DESCRIPTION,
    errors=(400, 401, 404, 503),
    parameters=[EXECUTION_ID_PARAMETER, LAST_EVENT_ID_PARAMETER],
)
async def execution_events(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/executions/{execution_id}/events: output chunks as they are produced, then the result."""
    execution_id = request.match_info["execution_id"]
    last_event_id = request.headers.get("Last-Event-ID")
    async with request.app[SERVICE].events(_owner(request), execution_id, last_event_id) as events:
        response = web.StreamResponse(headers={**_SSE_HEADERS, **await rate_headers(request)})
        await response.prepare(request)
        try:
            async for event in events:
                await response.write(_sse(event))
        except ConnectionResetError:
            pass  # the client went away
        except Exception:
            # The headers are sent: no error response can follow. The stream ends; the client may resume.
            log.exception("event stream of %s failed", execution_id)
    return response


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidFieldError(name, f"must be a whole number from {low} to {high}")
    return int(raw)


@documented(
    "The caller's executions in a session, newest first",
    ok=(200, SessionPage),
    errors=(400, 401),
    parameters=[
        {
            "in": "path",
            "name": "session_id",
            "required": True,
            "schema": {"type": "string", "maxLength": 128},
        },
        {"in": "query", "name": "limit", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}},
        {"in": "query", "name": "offset", "schema": {"type": "integer", "minimum": 0}},
    ],
)
async def session_executions(request: web.Request) -> web.Response:
    """GET /api/v1/sessions/{session_id}/executions: the caller's executions in a session, newest first."""
    limit = _query_int(request, "limit", 50, 1, MAX_PAGE)
    offset = _query_int(request, "offset", 0, 0, 1 << 31)
    page = await request.app[SERVICE].session(
        _owner(request), request.match_info["session_id"], limit, offset
    )
    return json_response(page)


@documented("Runtimes and their availability", ok=(200, LanguageInfo), response_is_list=True, errors=(401,))
async def languages(request: web.Request) -> web.Response:
    """GET /api/v1/languages: every runtime, its version and whether it is available."""
    return json_response(request.app[SERVICE].languages())


@documented("Prometheus metrics (text exposition format)", ok=(200, None), errors=())
async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: executions, queue, sandbox timings, rate limiting and containerd errors."""
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


@documented("Liveness of the HTTP server", ok=(200, Health), errors=())
async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: liveness of the HTTP server."""
    return json_response(Health(status="ok"))
