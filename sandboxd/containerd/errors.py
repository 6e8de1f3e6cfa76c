"""Typed errors for containerd RPC failures, translated at one boundary."""

from __future__ import annotations

import grpc


class ContainerdError(Exception):
    """A containerd RPC failed; ``method`` names the RPC, ``detail`` is containerd's message."""

    def __init__(self, method: str, detail: str) -> None:
        super().__init__(f"{method}: {detail}")
        self.method = method
        self.detail = detail


class NotFoundError(ContainerdError):
    """The object the RPC names does not exist."""


class UnavailableError(ContainerdError):
    """containerd cannot be reached (socket missing, daemon down or restarting)."""


_BY_CODE: dict[grpc.StatusCode, type[ContainerdError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def translate(method: str, error: grpc.aio.AioRpcError) -> ContainerdError:
    """Map a gRPC status onto the matching typed error."""
    kind = _BY_CODE.get(error.code(), ContainerdError)
    return kind(method, error.details() or error.code().name)
