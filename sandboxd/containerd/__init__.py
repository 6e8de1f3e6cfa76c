"""sandboxd's containerd client: typed services over gRPC, typed errors."""

from sandboxd.containerd.client import ContainerdClient, ExitStatus, Mount, ProcessInfo, Version
from sandboxd.containerd.errors import (
    AlreadyExistsError,
    ContainerdError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)

__all__ = [
    "AlreadyExistsError",
    "ContainerdClient",
    "ContainerdError",
    "DeadlineExceededError",
    "ExitStatus",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "Mount",
    "NotFoundError",
    "ProcessInfo",
    "UnavailableError",
    "Version",
]
