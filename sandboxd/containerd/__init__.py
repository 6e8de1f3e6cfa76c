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
    ContainerdError,
    NotFoundError,
    UnavailableError,
)

__all__ = [
    "Container",
    "ContainerdClient",
    "ContainerdError",
    "Descriptor",
    "ExitStatus",
    "Image",
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
