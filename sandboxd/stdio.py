"""A process's stdio through FIFOs: stdin fed from the request, stdout and stderr read with a cap.

containerd's shim opens the FIFOs by path. The daemon opens its read ends before
the process exists, holding a placeholder write end until the shim has opened
its own, so that a reader never sees end-of-file before the process wrote.
Output comes back only through these pipes: the daemon never reads a file the
sandbox could have written.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

import attrs

# The shim opens the stdin FIFO's read end shortly after the exec is created.
_STDIN_OPEN_ATTEMPTS: Final = 200
_STDIN_OPEN_INTERVAL: Final = 0.005


@attrs.frozen
class CapturedOutput:
    """What one stream delivered: at most the cap, and whether more was discarded."""

    data: bytes
    truncated: bool


class _CappedReader(asyncio.Protocol):
    """Collects up to ``cap`` bytes; reports the first byte beyond it."""

    def __init__(self, cap: int, on_overflow: Callable[[], None]) -> None:
        self._cap = cap
        self._on_overflow = on_overflow
        self._chunks: list[bytes] = []
        self._size = 0
        self.truncated = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        room = self._cap - self._size
        if len(data) > room:
            data = data[: max(room, 0)]
            if not self.truncated:
                self.truncated = True
                self._on_overflow()
        if data:
            self._chunks.append(data)
            self._size += len(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def output(self) -> CapturedOutput:
        return CapturedOutput(data=b"".join(self._chunks), truncated=self.truncated)


def _returning(reader: _CappedReader) -> Callable[[], _CappedReader]:
    return lambda: reader


class ProcessStdio:
    """The three FIFOs of one process, in a directory the daemon alone controls."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.stdin = directory / "stdin"
        self.stdout = directory / "stdout"
        self.stderr = directory / "stderr"
        self._placeholders: list[int] = []
        self._transports: list[asyncio.BaseTransport] = []
        self._readers: list[_CappedReader] = []

    @classmethod
    def create(cls, directory: Path) -> ProcessStdio:
        """Make the directory (mode 0700) and the FIFOs (mode 0600)."""
        directory.mkdir(mode=0o700)
        stdio = cls(directory)
        for path in (stdio.stdin, stdio.stdout, stdio.stderr):
            os.mkfifo(path, 0o600)
        return stdio

    async def open_output(self, cap: int, on_overflow: Callable[[], None]) -> None:
        """Start reading stdout and stderr; ``on_overflow`` runs when either passes ``cap``."""
        loop = asyncio.get_running_loop()
        for path in (self.stdout, self.stderr):
            read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self._placeholders.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            reader = _CappedReader(cap, on_overflow)
            pipe = os.fdopen(read_fd, "rb", buffering=0)
            transport, _ = await loop.connect_read_pipe(_returning(reader), pipe)
            self._readers.append(reader)
            self._transports.append(transport)

    def release_placeholders(self) -> None:
        """Drop the daemon's write ends once the shim holds its own (after the process started)."""
        for fd in self._placeholders:
            os.close(fd)
        self._placeholders.clear()

    async def feed_stdin(self, data: bytes) -> None:
        """Write ``data`` to the process's stdin and close the daemon's end."""
        fd = await self._open_stdin_writer()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(fd, "wb", buffering=0))
        self._transports.append(transport)
        if data:
            transport.write(data)
        transport.close()

    async def _open_stdin_writer(self) -> int:
        for _ in range(_STDIN_OPEN_ATTEMPTS):
            try:
                return os.open(self.stdin, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as error:
                if error.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
            await asyncio.sleep(_STDIN_OPEN_INTERVAL)
        raise TimeoutError("the shim did not open the stdin FIFO")

    async def collect(self, grace: float) -> tuple[CapturedOutput, CapturedOutput]:
        """Wait up to ``grace`` seconds for both streams to end; return what they delivered."""
        self.release_placeholders()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(r.closed for r in self._readers)), grace)
        stdout, stderr = self._readers
        return stdout.output(), stderr.output()

    def close_pipes(self) -> None:
        """Close every pipe end the daemon holds (on the event loop, which owns the transports)."""
        self.release_placeholders()
        for transport in self._transports:
            transport.close()
        self._transports.clear()

    def remove(self) -> None:
        """Remove the FIFOs and their directory (file system work: call it off the event loop)."""
        for path in (self.stdin, self.stdout, self.stderr):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISFIFO(path.lstat().st_mode):
                    path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.directory.rmdir()
