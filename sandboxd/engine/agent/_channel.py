"""The daemon's end of a sandbox agent: the FIFOs of the sandbox's init process, framed.

containerd's shim opens the FIFOs by path when the task is created. The daemon
opens the read ends first and holds a placeholder write end until the shim has
opened its own, so that a reader never sees end-of-file before the agent
wrote. Output comes back only through these pipes: the daemon never reads a
file the sandbox could have written.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

import attrs

from sandboxd.engine.agent._protocol import (
    PROTOCOL,
    AgentProtocolError,
    Frame,
    FrameDecoder,
    Reply,
    RunFlag,
    quit_agent,
    run_command,
    stdin_frames,
)
from sandboxd.models import OutputStream

log = logging.getLogger(__name__)

# Told each piece of a process's output as it arrives, within the cap: it must not block.
OutputListener = Callable[[OutputStream, bytes], None]

# The shim opens the stdin FIFO's read end while the task is created.
_STDIN_OPEN_ATTEMPTS: Final = 200
_STDIN_OPEN_INTERVAL: Final = 0.005
# What the agent itself writes to stderr (its own failures): kept for the log.
_DIAGNOSTICS_CAP: Final = 16 << 10


class AgentLostError(Exception):
    """The agent stopped answering: its sandbox died, or it broke the protocol."""


@attrs.frozen
class CapturedOutput:
    """What one stream delivered, up to the cap (passing it is reported at once, to ``on_overflow``)."""

    data: bytes


class _CappedBuffer:
    """Collects up to ``cap`` bytes; reports the first byte beyond it."""

    def __init__(self, cap: int, on_overflow: Callable[[], None]) -> None:
        self._cap = cap
        self._on_overflow = on_overflow
        self._chunks: list[bytes] = []
        self._size = 0
        self._overflowed = False

    def add(self, data: bytes) -> bytes:
        """Keep what fits under the cap; return what was kept."""
        room = self._cap - self._size
        if len(data) > room:
            data = data[: max(room, 0)]
            if not self._overflowed:
                self._overflowed = True
                self._on_overflow()
        if data:
            self._chunks.append(data)
            self._size += len(data)
        return data

    def output(self) -> CapturedOutput:
        return CapturedOutput(data=b"".join(self._chunks))


class AgentProcess:
    """One process the agent runs: its output so far and, once it ended, its exit status.

    Started with a status pipe, it also has what the process wrote there (``status``).
    """

    def __init__(
        self,
        output_cap: int,
        on_overflow: Callable[[], None],
        on_output: OutputListener | None = None,
        *,
        status_pipe: bool = False,
    ) -> None:
        self._stdout = _CappedBuffer(output_cap, on_overflow)
        self._stderr = _CappedBuffer(output_cap, on_overflow)
        self._on_output = on_output
        self._status_pipe = status_pipe
        self._status: bytes | None = None
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def _keep(self, stream: OutputStream, data: bytes) -> None:
        kept = (self._stdout if stream is OutputStream.STDOUT else self._stderr).add(data)
        if kept and self._on_output is not None:
            try:
                self._on_output(stream, kept)
            except Exception:
                # Whoever listens, the process's output is collected all the same.
                log.exception("an output listener failed")

    def _receive(self, frame: Frame) -> None:
        if frame.kind is Reply.STDOUT:
            self._keep(OutputStream.STDOUT, frame.payload)
        elif frame.kind is Reply.STDERR:
            self._keep(OutputStream.STDERR, frame.payload)
        elif frame.kind is Reply.START_FAILED:
            self._keep(OutputStream.STDERR, frame.payload.decode(errors="replace").encode() + b"\n")
        elif frame.kind is Reply.STATUS:
            if not self._status_pipe or self._status is not None:
                raise AgentProtocolError("STATUS frame of a process without a status pipe, or a second one")
            self._status = frame.payload
        elif frame.kind is Reply.EXITED:
            if not self.exited.done():
                self.exited.set_result(frame.exit_status())
        else:
            raise AgentProtocolError(f"{frame.kind.name} frame while a process runs")

    def output(self) -> tuple[CapturedOutput, CapturedOutput]:
        """What stdout and stderr delivered so far."""
        return self._stdout.output(), self._stderr.output()

    @property
    def status(self) -> bytes:
        """What the process wrote to its status pipe (empty: nothing, or no pipe)."""
        return self._status or b""


class _Replies(asyncio.Protocol):
    """Decodes the agent's stdout and hands each frame to its process."""

    def __init__(self, channel: AgentChannel) -> None:
        self._channel = channel
        self._decoder = FrameDecoder()

    def data_received(self, data: bytes) -> None:
        try:
            for frame in self._decoder.feed(data):
                self._channel._receive(frame)
        except AgentProtocolError as error:
            self._channel._lose(f"protocol error: {error}")

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._channel._lose("its output closed")


class _Diagnostics(asyncio.Protocol):
    def __init__(self) -> None:
        self.text = bytearray()

    def data_received(self, data: bytes) -> None:
        self.text += data[: max(_DIAGNOSTICS_CAP - len(self.text), 0)]


def _returning(protocol: asyncio.Protocol) -> Callable[[], asyncio.Protocol]:
    return lambda: protocol


class AgentChannel:
    """The init process's three FIFOs, in a directory the daemon alone controls."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.stdin = directory / "stdin"
        self.stdout = directory / "stdout"
        self.stderr = directory / "stderr"
        self._placeholders: list[int] = []
        self._transports: list[asyncio.BaseTransport] = []
        self._commands: asyncio.WriteTransport | None = None
        self._diagnostics = _Diagnostics()
        self._current: AgentProcess | None = None
        self._lost_reason: str | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @staticmethod
    def make_fifos(directory: Path) -> None:
        """Make the directory (mode 0700) and the FIFOs (mode 0600); file system work, off the loop."""
        directory.mkdir(mode=0o700)
        for name in ("stdin", "stdout", "stderr"):
            os.mkfifo(directory / name, 0o600)

    async def open_replies(self) -> None:
        """Start reading the agent's stdout and stderr, before the task exists."""
        loop = asyncio.get_running_loop()
        replies: asyncio.Protocol = _Replies(self)
        for path, protocol in ((self.stdout, replies), (self.stderr, self._diagnostics)):
            read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self._placeholders.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            pipe = os.fdopen(read_fd, "rb", buffering=0)
            transport, _ = await loop.connect_read_pipe(_returning(protocol), pipe)
            self._transports.append(transport)

    async def open_commands(self) -> None:
        """Open the agent's stdin once the shim holds its end (after the task was created)."""
        for _ in range(_STDIN_OPEN_ATTEMPTS):
            try:
                fd = os.open(self.stdin, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                break
            except OSError as error:
                if error.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
            await asyncio.sleep(_STDIN_OPEN_INTERVAL)
        else:
            raise TimeoutError("the shim did not open the agent's stdin FIFO")
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(fd, "wb", buffering=0))
        self._commands = transport
        self._transports.append(transport)
        # The shim holds the write ends of stdout and stderr now.
        self._release_placeholders()

    def run(
        self,
        argv: Sequence[str],
        environment: Mapping[str, str],
        *,
        cwd: str,
        uid: int,
        gid: int,
        stdin: bytes,
        output_cap: int,
        on_overflow: Callable[[], None],
        on_output: OutputListener | None = None,
        status_pipe: bool = False,
    ) -> AgentProcess:
        """Start ``argv`` in the sandbox and send it ``stdin``; the agent runs one process at a time.

        ``on_output`` is told each piece of its output as it arrives, up to ``output_cap`` per stream.
        With ``status_pipe`` the process gets a pipe as fd 3, whose content comes back as ``status``.
        """
        if self._current is not None:
            raise RuntimeError("the agent is running a process already")
        if self._commands is None or self._lost_reason is not None:
            raise AgentLostError(self._lost_reason or "the agent's stdin is not open")
        process = AgentProcess(output_cap, on_overflow, on_output, status_pipe=status_pipe)
        self._current = process
        flags = RunFlag.STATUS_PIPE if status_pipe else RunFlag.NONE
        self._commands.write(run_command(argv, environment, cwd=cwd, uid=uid, gid=gid, flags=flags))
        self._commands.writelines(stdin_frames(stdin))
        return process

    def quit(self) -> bool:
        """Have the agent exit, which ends the sandbox with its init process.

        False when that cannot end it now: the agent never answered, is gone, or runs a process
        (it reads no more commands until that ends).
        """
        ready = self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None
        if self._commands is None or self.lost or self._current is not None or not ready:
            return False
        self._commands.write(quit_agent())
        return True

    def _receive(self, frame: Frame) -> None:
        if frame.kind is Reply.READY:
            if frame.payload != PROTOCOL or self.ready.done():
                raise AgentProtocolError(f"unexpected READY {frame.payload!r}")
            self.ready.set_result(None)
            return
        process = self._current
        if process is None:
            raise AgentProtocolError(f"{frame.kind.name} frame with no process running")
        process._receive(frame)
        if frame.kind is Reply.EXITED:
            self._current = None

    def _lose(self, reason: str) -> None:
        if self._lost_reason is not None:
            return
        self._lost_reason = reason
        error = AgentLostError(f"the sandbox agent was lost: {reason}")
        for future in (self.ready, self._current.exited if self._current else None):
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # retrieved here: the waiter learns of it through the future
        self._current = None
        for transport in self._transports:
            transport.close()

    @property
    def lost(self) -> bool:
        """Whether the agent stopped answering (its sandbox died, or it broke the protocol)."""
        return self._lost_reason is not None

    @property
    def diagnostics(self) -> str:
        """What the agent wrote to its stderr (its own failures), for the log."""
        return self._diagnostics.text.decode(errors="replace").strip()

    def _release_placeholders(self) -> None:
        for fd in self._placeholders:
            os.close(fd)
        self._placeholders.clear()

    def close(self) -> None:
        """Close every pipe end the daemon holds (on the event loop, which owns the transports)."""
        self._release_placeholders()
        for transport in self._transports:
            transport.close()
        self._transports.clear()

    @staticmethod
    def remove_fifos(directory: Path) -> None:
        """Remove the FIFOs and their directory; file system work, off the loop.

        Only FIFOs are unlinked: whatever else is there is not the daemon's.
        """
        for name in ("stdin", "stdout", "stderr"):
            path = directory / name
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISFIFO(path.lstat().st_mode):
                    path.unlink()
        with contextlib.suppress(FileNotFoundError, OSError):
            directory.rmdir()

    @staticmethod
    def hold_output(directory: Path) -> list[int]:
        """Open read ends of the agent's stdout and stderr (of a sandbox the daemon lost track of)."""
        held = []
        for name in ("stdout", "stderr"):
            with contextlib.suppress(OSError):
                held.append(os.open(directory / name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        return held
