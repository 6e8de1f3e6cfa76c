"""Request middleware: every error becomes ``{"detail": ...}``; API routes need a valid X-API-Key."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from sandboxd.api.ratelimit import Decision
from sandboxd.api.state import CONFIG, IDENTITY, KEY_RING, LIMITER, METRICS, RATE
from sandboxd.engine.engine import RuntimeUnavailableError, UnsupportedLanguageError, UnsupportedVersionError
from sandboxd.engine.watch import ContainerdUnavailableError
from sandboxd.service.admission import QueueFullError
from sandboxd.service.executions import AlreadyFinishedError, ExecutionNotFoundError
from sandboxd.service.live import TooManyStreamsError
from sandboxd.service.store import StoreUnavailableError
from sandboxd.validation import InvalidFieldError, ValidationError

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1/"
API_KEY_HEADER: Final = "X-API-Key"


class RateLimitedError(Exception):
    """The key's bucket does not hold enough tokens for the request."""

    def __init__(self, decision: Decision) -> None:
        super().__init__("Rate limit exceeded")
        self.decision = decision


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error in the product document's shape."""
    return web.json_response({"detail": detail}, status=status, headers=headers)


# Failures that are the caller's to know about: HTTP status and extra headers; the detail is str(error).
_PLAIN_ERRORS: Final[tuple[tuple[type[Exception], int, Mapping[str, str]], ...]] = (
    (UnsupportedLanguageError, 400, {}),
    (UnsupportedVersionError, 400, {}),
    (ExecutionNotFoundError, 404, {}),
    (AlreadyFinishedError, 409, {}),
    (RuntimeUnavailableError, 503, {"Retry-After": "30"}),
    (ContainerdUnavailableError, 503, {"Retry-After": "5"}),
    (StoreUnavailableError, 503, {"Retry-After": "5"}),
    (TooManyStreamsError, 503, {"Retry-After": "5"}),
)


def _known_error(request: web.Request, error: Exception) -> web.Response | None:  # noqa: PLR0911 -- one per kind
    """The response for an error the API defines, or None for an unexpected one."""
    if isinstance(error, ValidationError):
        return error_response(400, "; ".join(error.problems))
    if isinstance(error, InvalidFieldError):
        return error_response(400, f"{error.field}: {error.message}")
    if isinstance(error, RateLimitedError):
        return error_response(429, "Rate limit exceeded", {"Retry-After": str(error.decision.retry_after)})
    if isinstance(error, QueueFullError):
        return error_response(
            503, "Server busy: too many executions queued; retry later", {"Retry-After": "1"}
        )
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        limit = request.app[CONFIG].server.max_body_bytes
        return error_response(413, f"Request body too large: at most {limit} bytes")
    if isinstance(error, web.HTTPException) and error.status >= 400:
        kept = {name: value for name, value in error.headers.items() if name in ("Allow", "Retry-After")}
        return error_response(error.status, error.reason, kept)
    for kind, status, headers in _PLAIN_ERRORS:
        if isinstance(error, kind):
            return error_response(status, str(error), dict(headers))
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Translate failures into precise JSON errors; bad input is a 4xx, never a 500."""
    try:
        return await handler(request)
    except Exception as error:
        response = _known_error(request, error)
        if response is not None:
            return response
        if isinstance(error, web.HTTPException):
            raise
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "Internal server error")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require a known X-API-Key on every API route; report the key's rate-limit state on the response."""
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    presented = request.headers.get(API_KEY_HEADER)
    if not presented:
        return error_response(401, f"Missing {API_KEY_HEADER} header")
    identity = request.app[KEY_RING].identify(presented)
    if identity is None:
        return error_response(401, "Invalid API key")
    request[IDENTITY] = identity
    response = await handler(request)  # error_middleware runs inside: errors are responses here
    if not response.prepared:  # a stream sent its headers itself, with rate_headers
        response.headers.update(await rate_headers(request))
    return response


async def rate_headers(request: web.Request) -> dict[str, str]:
    """The X-RateLimit headers of an authenticated request's response (none while the store is away)."""
    identity = request[IDENTITY]
    decision = request.get(RATE)
    if decision is None:
        try:
            decision = await request.app[LIMITER].peek(identity.name, identity.rate_limit)
        except StoreUnavailableError:
            return {}  # the answer stands; the bucket's state is unknown while the store is away
    return {"X-RateLimit-Limit": str(decision.limit), "X-RateLimit-Remaining": str(decision.remaining)}


async def charge(request: web.Request, cost: int) -> None:
    """Take ``cost`` executions from the caller's rate limit, or refuse the request with 429."""
    identity = request[IDENTITY]
    decision = await request.app[LIMITER].take(identity.name, identity.rate_limit, cost)
    request[RATE] = decision
    if not decision.allowed:
        request.app[METRICS].rate_limited.inc()
        raise RateLimitedError(decision)
