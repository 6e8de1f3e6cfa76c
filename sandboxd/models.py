"""The public API's request and result models: one definition, used by the engine and the HTTP layer."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from sandboxd.validation import check

MAX_ENV_VARS: Final = 64
MAX_ENV_BYTES: Final = 32 * 1024
MAX_SESSION_ID: Final = 128
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_SESSION_ID = re.compile(r"^[A-Za-z0-9._:-]+$")


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


@attrs.frozen
class ExecutionRequest:
    """One snippet to run, as the product document defines the request."""

    code: str = attrs.field(validator=_code)
    language: str
    stdin: str | None = None
    environment: Mapping[str, str] | None = attrs.field(default=None, validator=_environment)
    timeout: int | None = attrs.field(default=None, validator=_timeout)
    session_id: str | None = attrs.field(default=None, validator=_session_id)


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


@attrs.frozen
class ExecutionState:
    """An execution that has no result yet."""

    execution_id: str
    status: ExecutionStatus
    language: str
    session_id: str | None


@attrs.frozen
class ExecutionSummary:
    """One line of a session's listing; the full result is at /api/v1/executions/{execution_id}."""

    execution_id: str
    status: ExecutionStatus
    language: str
    exit_code: int | None
    execution_time: float | None
    created_at: str


@attrs.frozen
class SessionPage:
    """A page of a session's executions, newest first; ``next_offset`` is null on the last page."""

    session_id: str
    executions: tuple[ExecutionSummary, ...]
    next_offset: int | None


@attrs.frozen
class LanguageInfo:
    """A runtime as ``GET /api/v1/languages`` lists it."""

    language: str
    version: str | None
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
