"""Request middleware: every error becomes ``{"detail": ...}``; API routes need a valid X-API-Key."""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from sandboxd.admission import QueueFullError
from sandboxd.engine import RuntimeUnavailableError, UnsupportedLanguageError
from sandboxd.keys import CONFIG, KEYS
from sandboxd.validation import InvalidFieldError, ValidationError

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1/"
API_KEY_HEADER: Final = "X-API-Key"


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error in the product document's shape."""
    return web.json_response({"detail": detail}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:  # noqa: PLR0911
    """Translate failures into precise JSON errors; bad input is a 4xx, never a 500."""
    try:
        return await handler(request)
    except ValidationError as error:
        return error_response(400, "; ".join(error.problems))
    except InvalidFieldError as error:
        return error_response(400, f"{error.field}: {error.message}")
    except UnsupportedLanguageError as error:
        return error_response(400, str(error))
    except QueueFullError:
        return error_response(
            503, "Server busy: too many executions queued; retry later", {"Retry-After": "1"}
        )
    except RuntimeUnavailableError as error:
        return error_response(503, str(error), {"Retry-After": "30"})
    except web.HTTPRequestEntityTooLarge:
        return error_response(
            413, f"Request body too large: at most {request.app[CONFIG].server.max_body_bytes} bytes"
        )
    except web.HTTPException as error:
        if error.status < 400:
            raise
        kept = {name: value for name, value in error.headers.items() if name in ("Allow", "Retry-After")}
        return error_response(error.status, error.reason, kept)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "Internal server error")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require a known X-API-Key on every API route."""
    if request.path.startswith(API_PREFIX):
        presented = request.headers.get(API_KEY_HEADER)
        if not presented:
            return error_response(401, f"Missing {API_KEY_HEADER} header")
        if request.app[KEYS].identify(presented) is None:
            return error_response(401, "Invalid API key")
    return await handler(request)
