"""The public API's request and result models: one definition, used by the engine and the HTTP layer."""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

import attrs

from sandboxd.validation import check, described

MAX_ENV_VARS: Final = 64
MAX_ENV_BYTES: Final = 32 * 1024
MAX_SESSION_ID: Final = 128
MAX_FILES: Final = 32
MAX_FILE_NAME: Final = 255
MAX_ARGS: Final = 64
MAX_ARGS_BYTES: Final = 64 * 1024
MAX_OUTPUT_FILES: Final = 8
OUTPUT_FILE_BYTES: Final = 1 << 20
MAX_CALLBACK_URL: Final = 2048
MAX_VERSION: Final = 32
# One component of a relative path a request names inside /workspace (a file, or a glob of them).
_PATH_PART = re.compile(r"^[A-Za-z0-9_.+@=,-]+$")
_GLOB_PART = re.compile(r"^[A-Za-z0-9_.+@=,*?\[\]!-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_SESSION_ID = re.compile(r"^[A-Za-z0-9._:-]+$")
# A version a request asks for: a prefix of the runtime's version number (3, 3.11, 3.11.2).
_VERSION = re.compile(r"[0-9]+(\.[0-9]+){0,3}")
# A host name in a callback URL: ASCII labels (an international name in its xn-- form).
_HOST_NAME = re.compile(r"^(?=.{1,253}\.?$)[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?$")


class ExecutionStatus(enum.StrEnum):
    """Where an execution is: waiting, running, or how it ended (any end but completed has exit_code -1)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPILE_ERROR = "compile_error"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    INTERNAL_ERROR = "internal_error"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True once the execution has a result."""
        return self not in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)


class Encoding(enum.StrEnum):
    """How a file's ``content`` is written in JSON."""

    UTF8 = "utf8"
    BASE64 = "base64"


class Compare(enum.StrEnum):
    """How ``stdout`` is compared with ``expected_output``."""

    # Trailing whitespace at each line's end and trailing newlines are ignored.
    TRIM = "trim"
    EXACT = "exact"

    def matches(self, actual: str, expected: str) -> bool:
        """Whether ``actual`` output is ``expected`` by this rule."""
        if self is Compare.EXACT:
            return actual == expected
        return _trimmed(actual) == _trimmed(expected)


def _trimmed(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")


class OutputStream(enum.StrEnum):
    """Which of a program's output streams a chunk of output came from."""

    STDOUT = "stdout"
    STDERR = "stderr"


class Kind(enum.StrEnum):
    """How an execution was requested."""

    SYNC = "sync"
    BATCH = "batch"
    ASYNC = "async"


def _code(_instance: object, _attribute: attrs.Attribute[Any], value: str) -> None:
    check(bool(value.strip()), "code", "must not be empty")


def _environment(
    _instance: object, _attribute: attrs.Attribute[Any], value: Mapping[str, str] | None
) -> None:
    if value is None:
        return
    check(len(value) <= MAX_ENV_VARS, "environment", f"must have at most {MAX_ENV_VARS} variables")
    bad = sorted(name for name in value if not _ENV_NAME.match(name))
    check(not bad, "environment", f"invalid variable names: {', '.join(bad)}")
    nul = sorted(name for name, item in value.items() if "\0" in item)
    check(not nul, "environment", f"values must not contain NUL: {', '.join(nul)}")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in value.items())
    check(size <= MAX_ENV_BYTES, "environment", f"must be at most {MAX_ENV_BYTES} bytes in all")


def _timeout(_instance: object, _attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None:
        check(value > 0, "timeout", "must be a positive number of seconds")


def _session_id(_instance: object, _attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        check(
            0 < len(value) <= MAX_SESSION_ID and bool(_SESSION_ID.match(value)),
            "session_id",
            f"must be 1 to {MAX_SESSION_ID} characters of A-Z a-z 0-9 . _ : -",
        )


def _version(_instance: object, _attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        check(
            len(value) <= MAX_VERSION and _VERSION.fullmatch(value) is not None,
            "version",
            f"must be a version number such as 3.11: 1 to 4 numbers joined by dots, at most {MAX_VERSION} "
            "characters",
        )


def relative_path_problem(name: str, *, glob: bool = False) -> str | None:
    """Why ``name`` is not a relative path inside /workspace (a glob of them with ``glob``), or None."""
    if not name or len(name) > MAX_FILE_NAME:
        return f"must be 1 to {MAX_FILE_NAME} characters"
    if name.startswith("/"):
        return "must be relative to /workspace"
    part = _GLOB_PART if glob else _PATH_PART
    for component in name.split("/"):
        if component in ("", ".", ".."):
            return "must not contain empty, . or .. components"
        if not part.match(component):
            allowed = "A-Z a-z 0-9 _ . + @ = , -" + (" * ? [ ] !" if glob else "")
            return f"may use only {allowed} and / between names"
    return None


@attrs.frozen
class InputFile:
    """A file written into /workspace before the program runs."""

    name: str
    content: str
    encoding: Encoding = Encoding.UTF8

    def __attrs_post_init__(self) -> None:
        problem = relative_path_problem(self.name)
        check(problem is None, "name", problem or "")
        if self.encoding is Encoding.BASE64:
            try:
                base64.b64decode(self.content, validate=True)
            except (binascii.Error, ValueError):
                check(False, "content", "is not valid base64")

    def data(self) -> bytes:
        """The file's bytes."""
        if self.encoding is Encoding.BASE64:
            return base64.b64decode(self.content, validate=True)
        return self.content.encode()


def _files(_instance: object, _attribute: attrs.Attribute[Any], value: tuple[InputFile, ...]) -> None:
    check(len(value) <= MAX_FILES, "files", f"must be at most {MAX_FILES} files")
    seen: set[str] = set()
    for file in value:
        check(file.name not in seen, "files", f"names {file.name} twice")
        seen.add(file.name)
    for file in value:
        # A file and a directory of the same name cannot both exist.
        parents = {"/".join(file.name.split("/")[:n]) for n in range(1, file.name.count("/") + 1)}
        clash = sorted(parents & seen)
        check(not clash, "files", f"{clash[0]} is both a file and a directory" if clash else "")


def _args(_instance: object, _attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    check(len(value) <= MAX_ARGS, "args", f"must be at most {MAX_ARGS} arguments")
    check(all("\0" not in arg for arg in value), "args", "must not contain NUL")
    size = sum(len(arg.encode()) for arg in value)
    check(size <= MAX_ARGS_BYTES, "args", f"must be at most {MAX_ARGS_BYTES} bytes in all")


def _output_files(_instance: object, _attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    check(len(value) <= MAX_OUTPUT_FILES, "output_files", f"must name at most {MAX_OUTPUT_FILES} files")
    for pattern in value:
        problem = relative_path_problem(pattern, glob=True)
        check(problem is None, "output_files", f"{pattern!r} {problem}")


def callback_url_problem(url: str) -> str | None:  # noqa: PLR0911 -- one answer per problem
    """Why ``url`` cannot be a webhook's address (syntax only; where it points is checked later), or None."""
    if not url or len(url) > MAX_CALLBACK_URL:
        return f"must be 1 to {MAX_CALLBACK_URL} characters"
    if not url.isascii() or not url.isprintable() or " " in url:
        return "must be ASCII without spaces or control characters (percent-encode the rest)"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # an unbalanced [ or ] in the host
        return "must be an absolute http:// or https:// URL"
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return "must be an absolute http:// or https:// URL"
    if "@" in parts.netloc:
        return "must not contain credentials (user:password@); receivers verify the signature instead"
    if parts.fragment or url.endswith("#"):
        return "must not have a #fragment"
    host = parts.hostname or ""
    if host.startswith("[") or ":" in host:  # urlsplit strips an IPv6 literal's brackets
        literal = host.strip("[]")
        if not _is_ipv6(literal):
            return f"has an invalid IPv6 address: {literal}"
    elif not _HOST_NAME.match(host):
        return "must name a host: letters, digits, - _ and . (an international name in its xn-- form)"
    try:
        parts.port  # noqa: B018 -- raises for a port out of range or not a number
    except ValueError:
        return "has an invalid port"
    return None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _callback_url(_instance: object, _attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        problem = callback_url_problem(value)
        check(problem is None, "callback_url", problem or "")


@attrs.frozen
class ExecutionRequest:
    """One snippet to run, as the product document defines the request."""

    code: str = attrs.field(validator=_code)
    language: str
    # A version prefix ("3.11"): the first runtime of the language whose version starts so runs.
    version: str | None = attrs.field(
        default=None,
        validator=_version,
        metadata=described(
            "A version of the language, such as 3.11: the first of its runtimes whose version starts "
            "with these numbers runs (3.1 is 3.1.x, not 3.13). Without it, the runtime the language names.",
            pattern=r"^[0-9]+(\.[0-9]+){0,3}$",
            maxLength=MAX_VERSION,
        ),
    )
    stdin: str | None = None
    environment: Mapping[str, str] | None = attrs.field(default=None, validator=_environment)
    timeout: int | None = attrs.field(default=None, validator=_timeout)
    session_id: str | None = attrs.field(default=None, validator=_session_id)
    # What a grader expects on stdout: the result says whether it ``passed``.
    expected_output: str | None = None
    compare: Compare = Compare.TRIM
    files: tuple[InputFile, ...] = attrs.field(default=(), validator=_files)
    args: tuple[str, ...] = attrs.field(default=(), validator=_args)
    # Names or globs inside /workspace whose files come back in the result.
    output_files: tuple[str, ...] = attrs.field(default=(), validator=_output_files)
    # Asynchronous requests only: where the result is POSTed, signed, once the execution has finished.
    callback_url: str | None = attrs.field(default=None, validator=_callback_url)


@attrs.frozen
class OutputFile:
    """A file the program left in /workspace, as the request's ``output_files`` asked."""

    name: str
    size: int
    content: str  # base64


@attrs.frozen
class ExecutionResult:
    """One execution's outcome; the product document's fields plus ``status``."""

    execution_id: str
    stdout: str
    stderr: str
    exit_code: int
    execution_time: float
    language: str
    session_id: str | None
    status: ExecutionStatus
    # Usage of the whole sandbox (gVisor's own kernel included), where the host's cgroup reports it.
    cpu_time: float | None = None
    memory_peak: int | None = None
    # Whether stdout matched the request's expected_output (null when none was given).
    passed: bool | None = None
    # The files the request's output_files matched (null when none were asked for).
    output_files: tuple[OutputFile, ...] | None = None


@attrs.frozen
class ExecutionState:
    """An execution that has no result yet."""

    execution_id: str
    status: ExecutionStatus
    language: str
    session_id: str | None


@attrs.frozen
class OutputEvent:
    """The data of a ``stdout`` or ``stderr`` event: the next piece of that stream's text."""

    # The piece's number within the execution's run, from 1, across both streams.
    seq: int
    data: str


@attrs.frozen
class RestartEvent:
    """The data of a ``reset`` event: the execution runs again from its start (its host stopped)."""

    attempt: int


@attrs.frozen
class ExecutionSummary:
    """One line of a session's listing; the full result is at /api/v1/executions/{execution_id}."""

    execution_id: str
    status: ExecutionStatus
    language: str
    exit_code: int | None
    execution_time: float | None
    created_at: str
    passed: bool | None = None


@attrs.frozen
class SessionPage:
    """A page of a session's executions, newest first; ``next_offset`` is null on the last page."""

    session_id: str
    executions: tuple[ExecutionSummary, ...]
    next_offset: int | None


@attrs.frozen
class LanguageInfo:
    """A runtime as ``GET /api/v1/languages`` lists it."""

    runtime: str = attrs.field(
        metadata=described("The runtime's name (a request may name it as its language)")
    )
    language: str = attrs.field(metadata=described("The language a request names to get this runtime"))
    version: str | None = attrs.field(
        metadata=described(
            "Its version number (3.11.2): its image's, once inspected, else the version it declares"
        )
    )
    version_string: str | None = attrs.field(
        metadata=described("The first line its image's version command printed (Python 3.11.2)")
    )
    default: bool = attrs.field(
        metadata=described("Whether it is its language's default: what a request without a version gets")
    )
    aliases: tuple[str, ...]
    available: bool
    reason: str | None = None


@attrs.frozen
class AsyncAccepted:
    """The answer to an asynchronous submission: poll /api/v1/executions/{execution_id}."""

    execution_id: str
    status: ExecutionStatus


@attrs.frozen
class Health:
    """Liveness."""

    status: str


@attrs.frozen
class ErrorBody:
    """Every error response: ``{"detail": "..."}``."""

    detail: str
