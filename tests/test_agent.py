"""The sandbox agent: its wire format (pure logic) and its build."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sandboxd.engine.agent import AGENT_NAME, AgentBuildError, AgentProtocolError, build_agent
from sandboxd.engine.agent._protocol import (
    MAX_REPLY_PAYLOAD,
    STDIN_CHUNK,
    Frame,
    FrameDecoder,
    Reply,
    run_command,
    stdin_frames,
)


def test_run_command_layout() -> None:
    """A run frame: counts, uid and gid, then arguments, environment and working directory, NUL-ended."""
    frame = run_command(["python3", "main.py"], {"A": "1"}, cwd="/workspace", uid=65534, gid=65534)
    kind, size = struct.unpack(">cI", frame[:5])
    assert (kind, size) == (b"x", len(frame) - 5)
    assert struct.unpack(">IIII", frame[5:21]) == (2, 1, 65534, 65534)
    assert frame[21:] == b"python3\0main.py\0A=1\0/workspace\0"


@pytest.mark.parametrize(("argv", "environment"), [([], {}), (["a\0b"], {}), (["a"], {"K": "v\0w"})])
def test_run_command_refuses_what_c_cannot_carry(argv: list[str], environment: dict[str, str]) -> None:
    """No empty argument list, and no NUL anywhere: C strings end there."""
    with pytest.raises(ValueError, match=r"argv|NUL"):
        run_command(argv, environment, cwd="/", uid=1, gid=1)


def test_stdin_is_chunked_then_closed() -> None:
    """Stdin goes in frames of at most STDIN_CHUNK bytes, then one end-of-stdin frame."""
    data = b"x" * (STDIN_CHUNK * 2 + 5)
    frames = list(stdin_frames(data))
    assert [f[:1] for f in frames] == [b"i", b"i", b"i", b"c"]
    assert b"".join(f[5:] for f in frames[:-1]) == data
    assert list(stdin_frames(b"")) == [b"c\0\0\0\0"]


def _reply(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">cI", kind, len(payload)) + payload


def test_decoder_reassembles_frames_however_split() -> None:
    """Frames come out whole and in order, whatever sizes the pipe delivered them in."""
    stream = _reply(b"r", b"sandboxd-agent 1") + _reply(b"o", b"hello\n") + _reply(b"x", b"\0\0\0\3")
    for step in (1, 2, 3, 7, len(stream)):
        decoder = FrameDecoder()
        frames: list[Frame] = []
        for start in range(0, len(stream), step):
            frames += decoder.feed(stream[start : start + step])
        assert [f.kind for f in frames] == [Reply.READY, Reply.STDOUT, Reply.EXITED]
        assert frames[1].payload == b"hello\n"
        assert frames[2].exit_status() == 3
        assert decoder.pending == 0


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (_reply(b"?", b""), "unknown frame type"),
        (struct.pack(">cI", b"o", MAX_REPLY_PAYLOAD + 1), "STDOUT frame of"),
    ],
)
def test_decoder_refuses_what_the_agent_never_sends(stream: bytes, message: str) -> None:
    """An unknown type or an oversized frame is a protocol error, before any payload is buffered."""
    with pytest.raises(AgentProtocolError, match=message):
        FrameDecoder().feed(stream)


@pytest.mark.parametrize("payload", [b"\0\0\1", struct.pack(">I", 1000)])
def test_exit_status_is_checked(payload: bytes) -> None:
    """An exit frame carries four bytes and a status no larger than 128 + 255."""
    with pytest.raises(AgentProtocolError):
        Frame(Reply.EXITED, payload).exit_status()


def test_agent_is_built_once_per_source(tmp_path: Path) -> None:
    """The first call compiles a static binary; the next finds it and compiles nothing."""
    built = build_agent(tmp_path)
    binary = built / AGENT_NAME
    assert binary.stat().st_mode & 0o111
    assert binary.read_bytes()[:4] == b"\x7fELF"
    first_build = binary.stat().st_mtime_ns
    assert build_agent(tmp_path) == built
    assert binary.stat().st_mtime_ns == first_build
    assert [p.name for p in tmp_path.iterdir()] == [built.name]


def test_missing_compiler_is_named(tmp_path: Path) -> None:
    """Without a C compiler the error says what to install."""
    with pytest.raises(AgentBuildError, match="install gcc"):
        build_agent(tmp_path, compiler="no-such-cc")
