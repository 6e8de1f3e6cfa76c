"""The one configured converter: strict structuring with one readable line per problem.

Everything that comes from outside (HTTP bodies, runtime TOML files, the daemon's
configuration) is structured into attrs classes here. Primitives are not
coerced: ``1`` is not a string and ``"ab"`` is not a list. Classes marked
``external_document`` (JSON other programs write: OCI images) keep the keys
that format spells its own way (``json_key``) and ignore keys sandboxd does not model.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, get_args

import attrs
import cattrs
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

_T = TypeVar("_T")
_JSON_KEY: Final = "sandboxd.json_key"
_EXTERNAL_DOCUMENT: Final = "__sandboxd_external_document__"
_SCHEMA: Final = "sandboxd.schema"


class InvalidFieldError(ValueError):
    """Raised by field validators; ``field`` is the attribute name, the message says what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class ValidationError(ValueError):
    """Input did not validate; ``problems`` holds one line per problem, each naming its field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def json_key(key: str) -> dict[str, str]:
    """Field metadata: the field's key in JSON, where it is not the field's name (``mediaType``)."""
    return {_JSON_KEY: key}


def described(description: str, **schema: Any) -> dict[str, Any]:
    """Field metadata: what the OpenAPI document says of the field (``pattern``, ``maxLength``...)."""
    return {_SCHEMA: {"description": description, **schema}}


def schema_of(field: attrs.Attribute[Any]) -> dict[str, Any]:
    """The OpenAPI properties ``described`` gave ``field`` (none when it was not)."""
    return dict(field.metadata.get(_SCHEMA, {}))


def external_document(cls: type[_T]) -> type[_T]:
    """Class decorator: ``cls`` models JSON another program writes.

    Its fields are read from and written to the keys ``json_key`` names, keys it
    does not model are ignored (the format may grow), and fields at their
    default are left out when it is unstructured (the format's optional fields).
    """
    setattr(cls, _EXTERNAL_DOCUMENT, True)
    return cls


def _document_keys(cls: type[Any]) -> dict[str, Any]:
    """Per-field overrides (cattrs ``override``) for an external document's fields."""
    return {
        field.name: override(
            rename=field.metadata.get(_JSON_KEY), omit_if_default=field.default is not attrs.NOTHING
        )
        for field in attrs.fields(cls)
    }


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}


def _strict_hook(kind: type[Any]) -> Callable[[Any, type[Any]], Any]:
    def structure_primitive(value: Any, _: type[Any]) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {_TYPE_NAMES[kind]}")
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            raise TypeError(f"expected {_TYPE_NAMES[kind]}")
        return value

    return structure_primitive


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for kind in (str, int, bool, float):
        converter.register_structure_hook(kind, _strict_hook(kind))

    def is_tuple(cls: Any) -> bool:
        return getattr(cls, "__origin__", None) is tuple

    def structure_tuple(value: Any, cls: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise TypeError("expected a list")
        item_type = get_args(cls)[0]
        return tuple(converter.structure(value, list[item_type]))  # type: ignore[valid-type]

    converter.register_structure_hook_func(is_tuple, structure_tuple)

    def structure_enum(value: Any, cls: type[enum.Enum]) -> enum.Enum:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(str(member.value) for member in cls)
            raise ValueError(f"must be one of: {choices}") from None

    # Each enum base ahead of the primitive it derives from, which would take its values as they are.
    for base in (enum.StrEnum, enum.IntEnum, enum.Enum):
        converter.register_structure_hook(base, structure_enum)

    def is_str_mapping(cls: Any) -> bool:
        return getattr(cls, "__origin__", None) in (dict, Mapping) and get_args(cls) == (str, str)

    def structure_str_mapping(value: Any, _: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            raise TypeError("expected an object")
        for key, item in value.items():
            if not isinstance(item, str):
                raise InvalidFieldError(key, "expected a string")
        return dict(value)

    converter.register_structure_hook_func(is_str_mapping, structure_str_mapping)

    def is_external_document(cls: Any) -> bool:
        return isinstance(cls, type) and cls.__dict__.get(_EXTERNAL_DOCUMENT) is True

    converter.register_structure_hook_factory(
        is_external_document,
        lambda cls: make_dict_structure_fn(
            cls, converter, _cattrs_forbid_extra_keys=False, **_document_keys(cls)
        ),
    )
    converter.register_unstructure_hook_factory(
        is_external_document, lambda cls: make_dict_unstructure_fn(cls, converter, **_document_keys(cls))
    )
    return converter


converter = _make_converter()

_PATH = re.compile(r"^(?P<message>.*) @ \$(?P<path>.*)$", re.DOTALL)
_FIELD_MARK = "\0"


def _describe(error: BaseException, _type: type[Any] | None) -> str:
    if isinstance(error, ForbiddenExtraKeysError):
        plural = "s" if len(error.extra_fields) > 1 else ""
        return f"unknown field{plural}: " + ", ".join(sorted(error.extra_fields))
    if isinstance(error, KeyError):
        return "required field missing"
    if isinstance(error, InvalidFieldError):
        # The validator knows the field; the path cattrs gives ends at its class.
        return f"{_FIELD_MARK}{error.field}{_FIELD_MARK}{error.message}"
    if isinstance(error, (TypeError, ValueError)):
        return str(error)
    return f"invalid value ({type(error).__name__})"


def _line(raw: str) -> str:
    match = _PATH.match(raw)
    message, location = (match["message"], match["path"].removeprefix(".")) if match else (raw, "")
    if message.startswith(_FIELD_MARK):
        _, field, message = message.split(_FIELD_MARK, 2)
        location = f"{location}.{field}" if location else field
    return f"{location}: {message}" if location else message


def structure(data: Any, cls: type[_T]) -> _T:
    """Structure ``data`` into ``cls`` or raise ``ValidationError`` listing every problem."""
    if attrs.has(cls) and not isinstance(data, dict):
        raise ValidationError(["expected an object"])
    try:
        return converter.structure(data, cls)
    except cattrs.BaseValidationError as error:
        lines = cattrs.transform_error(error, path="$", format_exception=_describe)
        raise ValidationError([_line(raw) for raw in lines]) from error
    except (TypeError, ValueError) as error:
        raise ValidationError([_line(_describe(error, cls))]) from error


def check(condition: bool, field: str, message: str) -> None:
    """Raise ``InvalidFieldError`` for ``field`` unless ``condition`` holds (for ``__attrs_post_init__``)."""
    if not condition:
        raise InvalidFieldError(field, message)


def positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """Attrs validator: the value is greater than zero."""
    check(value > 0, attribute.name, f"must be positive, got {value}")
