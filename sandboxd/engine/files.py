"""The files a request takes out of /workspace: the agent's collector records, read as untrusted input.

The collector runs inside the sandbox as the program's user, so its output is no
more trustworthy than the program: every record is bounded and checked, and a
stream that breaks the format yields no files, never a crash.
"""

from __future__ import annotations

import base64
import struct
from typing import Final

import attrs

from sandboxd.models import MAX_OUTPUT_FILES, OUTPUT_FILE_BYTES, OutputFile

_U32: Final = struct.Struct(">I")
_MAX_NAME: Final = 4096
_MAX_REASON: Final = 256
# What the collector may write at most: every file at its largest, and a skip record per extra match.
COLLECT_OUTPUT_CAP: Final = MAX_OUTPUT_FILES * (OUTPUT_FILE_BYTES + _MAX_NAME + 16) + (1 << 20)
COLLECT_TIMEOUT: Final = 10.0


class CollectedFormatError(ValueError):
    """The collector's output does not follow its format."""


@attrs.frozen
class Collected:
    """The files found, and one line for each matching file that is not returned."""

    files: tuple[OutputFile, ...]
    skipped: tuple[str, ...]


def collect_argv(agent: str, patterns: tuple[str, ...]) -> list[str]:
    """The command that makes the agent collect the files ``patterns`` match in its working directory."""
    return [agent, "collect", str(MAX_OUTPUT_FILES), str(OUTPUT_FILE_BYTES), *patterns]


def _name(raw: bytes) -> str:
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        raise CollectedFormatError("a file name is not UTF-8") from None
    parts = name.split("/")
    if "\0" in name or name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise CollectedFormatError(f"not a relative file name: {name!r}")
    return name


def parse_collected(data: bytes, *, exit_code: int | None, truncated: bool) -> Collected:
    """The records of the collector's stdout; ``CollectedFormatError`` when it failed or broke the format."""
    if exit_code != 0 or truncated:
        ending = "wrote more than it may" if truncated else f"ended with status {exit_code}"
        raise CollectedFormatError(f"the collector {ending}")
    files: list[OutputFile] = []
    skipped: list[str] = []
    offset = 0

    def take(size: int) -> bytes:
        nonlocal offset
        if len(data) - offset < size:
            raise CollectedFormatError("the output ends inside a record")
        chunk = data[offset : offset + size]
        offset += size
        return chunk

    def length(limit: int) -> int:
        (value,) = _U32.unpack(take(_U32.size))
        if value > limit:
            raise CollectedFormatError(f"a field of {value} bytes (at most {limit})")
        return int(value)

    while offset < len(data):
        kind = take(1)
        if kind not in (b"F", b"S"):
            raise CollectedFormatError(f"unknown record type {kind!r}")
        name = _name(take(length(_MAX_NAME)))
        if kind == b"F":
            content = take(length(OUTPUT_FILE_BYTES))
            if len(files) == MAX_OUTPUT_FILES:
                raise CollectedFormatError(f"more than {MAX_OUTPUT_FILES} files")
            files.append(OutputFile(name=name, size=len(content), content=base64.b64encode(content).decode()))
        else:
            reason = take(length(_MAX_REASON)).decode(errors="replace")
            skipped.append(f"output file {name} not returned: {reason}")
    return Collected(files=tuple(files), skipped=tuple(skipped))
