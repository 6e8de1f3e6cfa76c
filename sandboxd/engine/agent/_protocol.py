"""The agent's wire format: frames of one type byte, a big-endian u32 length and a payload.

The daemon trusts nothing it reads here blindly: a frame of an unknown type, an
oversized frame or a malformed payload is a protocol error, never a crash.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Final

import attrs

PROTOCOL: Final = b"sandboxd-agent 2"
_HEADER: Final = struct.Struct(">cI")
_U32: Final = struct.Struct(">I")
_RUN_HEADER: Final = struct.Struct(">IIIII")
# The agent reads a child's pipes 32 KiB at a time; anything larger is not the agent's.
MAX_REPLY_PAYLOAD: Final = 1 << 16
STDIN_CHUNK: Final = 1 << 16
MAX_COMMAND: Final = 1 << 20
# What the agent keeps of a process's status pipe (the rest is dropped).
MAX_STATUS: Final = 64


class AgentProtocolError(Exception):
    """The agent sent something the protocol does not allow."""


class RunFlag(enum.IntFlag):
    """Options of a run command."""

    NONE = 0
    # The process gets a pipe as fd 3; what it writes there comes back in a STATUS frame.
    STATUS_PIPE = 1


class Reply(enum.Enum):
    """What the agent tells the daemon."""

    READY = b"r"
    STDOUT = b"o"
    STDERR = b"e"
    START_FAILED = b"f"
    STATUS = b"s"
    EXITED = b"x"


# Frames whose payload the protocol bounds more tightly than MAX_REPLY_PAYLOAD.
_PAYLOAD_LIMITS: Final = {Reply.STATUS: MAX_STATUS}


@attrs.frozen
class Frame:
    """One reply from the agent."""

    kind: Reply
    payload: bytes

    def exit_status(self) -> int:
        """The status an EXITED frame carries."""
        if self.kind is not Reply.EXITED or len(self.payload) != _U32.size:
            raise AgentProtocolError(f"not an exit status: {self.kind.name} of {len(self.payload)} bytes")
        (status,) = _U32.unpack(self.payload)
        if status > 255 + 128:
            raise AgentProtocolError(f"exit status out of range: {status}")
        return int(status)


def _frame(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def run_command(
    argv: Sequence[str],
    environment: Mapping[str, str],
    *,
    cwd: str,
    uid: int,
    gid: int,
    flags: RunFlag = RunFlag.NONE,
) -> bytes:
    """The frame that starts ``argv`` as ``uid``:``gid`` in ``cwd`` with exactly ``environment``."""
    if not argv:
        raise ValueError("argv must not be empty")
    strings = [*argv, *(f"{key}={value}" for key, value in environment.items()), cwd]
    if any("\0" in text for text in strings):
        raise ValueError("arguments, environment and working directory must not contain NUL")
    payload = _RUN_HEADER.pack(len(argv), len(environment), uid, gid, flags)
    payload += b"".join(text.encode() + b"\0" for text in strings)
    if len(payload) > MAX_COMMAND:
        raise ValueError(f"command of {len(payload)} bytes exceeds {MAX_COMMAND}")
    return _frame(b"x", payload)


def quit_agent() -> bytes:
    """The frame that makes the agent exit, which ends its sandbox with it."""
    return _frame(b"q")


def stdin_frames(data: bytes) -> Iterator[bytes]:
    """``data`` as stdin frames, then the end-of-stdin frame."""
    for start in range(0, len(data), STDIN_CHUNK):
        yield _frame(b"i", data[start : start + STDIN_CHUNK])
    yield _frame(b"c")


class FrameDecoder:
    """Turns the agent's byte stream into frames, however it was split into reads."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; return every frame now complete."""
        self._buffer += data
        frames = []
        offset = 0
        view = memoryview(self._buffer)
        try:
            while len(view) - offset >= _HEADER.size:
                kind, size = _HEADER.unpack_from(view, offset)
                try:
                    reply = Reply(kind)
                except ValueError:
                    raise AgentProtocolError(f"unknown frame type {kind!r}") from None
                if size > _PAYLOAD_LIMITS.get(reply, MAX_REPLY_PAYLOAD):
                    raise AgentProtocolError(f"{reply.name} frame of {size} bytes")
                start = offset + _HEADER.size
                if len(view) < start + size:
                    break
                frames.append(Frame(reply, bytes(view[start : start + size])))
                offset = start + size
        finally:
            view.release()
        del self._buffer[:offset]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame."""
        return len(self._buffer)
