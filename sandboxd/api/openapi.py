"""The OpenAPI document, derived from the attrs models: marshmallow schemas are generated, not written.

aiohttp-apigami documents routes from marshmallow schemas. sandboxd validates
with cattrs, so each schema here is built from an attrs class's fields and used
for documentation only.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import attrs
import marshmallow
from aiohttp import web
from aiohttp_apigami import AiohttpApiSpec, docs, request_schema, response_schema
from aiohttp_apigami.constants import SWAGGER_DICT
from marshmallow import fields

from sandboxd import __version__
from sandboxd.models import ErrorBody
from sandboxd.validation import schema_of

_H = TypeVar("_H", bound=Callable[..., Any])

SPEC_URL: Final = "/api/docs/openapi.json"
UI_PATH: Final = "/api/docs"
_ERRORS: Final[Mapping[int, str]] = {
    400: "Invalid input; the detail names the field",
    401: "Missing or unknown X-API-Key",
    404: "No such execution for this key",
    409: "The execution has already finished",
    413: "Request body too large",
    415: "Content-Type is not application/json",
    429: "Rate limit exceeded (Retry-After says when to retry)",
    503: "Busy (queue full, too many event streams), or the runtime or store is unavailable (Retry-After)",
}


def _field(kind: Any, required: bool, schema: dict[str, Any]) -> fields.Field:
    options: dict[str, Any] = {"required": required, "metadata": schema}
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = next(arg for arg in args if arg is not type(None))
        return _field_of(inner, {**options, "allow_none": True})
    return _field_of(kind, options)


def _field_of(kind: Any, options: dict[str, Any]) -> fields.Field:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    simple: dict[Any, type[fields.Field]] = {
        str: fields.String,
        int: fields.Integer,
        float: fields.Float,
        bool: fields.Boolean,
    }
    if kind in simple:
        return simple[kind](**options)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return fields.String(validate=marshmallow.validate.OneOf([m.value for m in kind]), **options)
    if origin is tuple:
        return fields.List(_field_of(args[0], {}), **options)
    if origin in (dict, Mapping, typing.Mapping):
        return fields.Dict(keys=fields.String(), values=fields.String(), **options)
    if attrs.has(kind):
        return fields.Nested(schema_for(kind), **options)
    raise TypeError(f"no OpenAPI mapping for {kind!r}")


_schemas: dict[str, type[marshmallow.Schema]] = {}


def schema_for(cls: type[Any]) -> type[marshmallow.Schema]:
    """A marshmallow schema with the attrs class's fields, named after it (made once per class)."""
    if cls.__qualname__ in _schemas:
        return _schemas[cls.__qualname__]
    hints = typing.get_type_hints(cls)
    declared = {
        field.name: _field(hints[field.name], field.default is attrs.NOTHING, schema_of(field))
        for field in attrs.fields(cls)
        if field.init and not field.name.startswith("_")
    }
    schema: type[marshmallow.Schema] = marshmallow.Schema.from_dict(declared, name=cls.__name__)
    _schemas[cls.__qualname__] = schema
    return schema


def documented(
    summary: str,
    *,
    ok: tuple[int, type[Any] | None],
    body: type[Any] | None = None,
    body_is_list: bool = False,
    response_is_list: bool = False,
    errors: tuple[int, ...] = (400, 401),
    parameters: list[dict[str, Any]] | None = None,
    media_type: str = "text/plain",
    ok_description: str = "Success",
) -> Callable[[_H], _H]:
    """Document a handler: its summary, request body, success response and error responses.

    A success response without a model is a string of ``media_type``, described by ``ok_description``.
    """

    def decorate(handler: _H) -> _H:
        status, model = ok
        decorated: Any = handler
        for code in errors:
            decorated = response_schema(schema_for(ErrorBody), code, description=_ERRORS[code])(decorated)
        if model is not None:
            decorated = response_schema(
                schema_for(model)(many=response_is_list), status, description="Success"
            )(decorated)
        if body is not None:
            decorated = request_schema(schema_for(body)(many=body_is_list), required=True)(decorated)
        plain = {
            status: {"description": ok_description, "content": {media_type: {"schema": {"type": "string"}}}}
        }
        decorated = docs(
            responses=plain if model is None else None,
            summary=summary,
            description=inspect.cleandoc(handler.__doc__ or ""),
            parameters=parameters or [],
            security=[{"ApiKey": []}] if 401 in errors else [],
        )(decorated)
        return typing.cast(_H, decorated)

    return decorate


def setup(app: web.Application) -> None:
    """Serve the OpenAPI document and Swagger UI."""
    # aiohttp-apigami keeps its state under string app keys; sandboxd's own state uses AppKey.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        spec = _register(app)
        spec.spec.components.security_scheme(
            "ApiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        )
        app[SWAGGER_DICT] = _openapi_3(spec.swagger_dict())


def _openapi_3(document: dict[str, Any]) -> dict[str, Any]:
    """Drop what apigami's ``docs`` adds for Swagger 2 only (``produces``), which OpenAPI 3 forbids."""
    for item in document.get("paths", {}).values():
        for operation in item.values():
            operation.pop("produces", None)
    return document


def _register(app: web.Application) -> AiohttpApiSpec:
    return AiohttpApiSpec(
        app=app,
        title="sandboxd",
        version=__version__,
        url=SPEC_URL,
        swagger_path=UI_PATH,
        static_path="/api/docs/static",
        openapi_version="3.0.2",
        in_place=True,
    )
