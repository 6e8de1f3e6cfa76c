"""sandboxd's containerd client: typed services over gRPC, typed values and errors (no protobuf leaves it)."""

from sandboxd.containerd.client import (
    Container,
    ContainerdClient,
    Descriptor,
    ExitStatus,
    Image,
    Lease,
    Mount,
    ProcessInfo,
    RuncOptions,
    Snapshot,
    TaskStatus,
    Version,
)
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
    "Container",
    "ContainerdClient",
    "ContainerdError",
    "DeadlineExceededError",
    "Descriptor",
    "ExitStatus",
    "FailedPreconditionError",
    "Image",
    "InvalidArgumentError",
    "Lease",
    "Mount",
    "NotFoundError",
    "ProcessInfo",
    "RuncOptions",
    "Snapshot",
    "TaskStatus",
    "UnavailableError",
    "Version",
]
