"""The sandbox agent: its wire format (pure logic) and its build."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from sandboxd.engine.agent import (
    AGENT_NAME,
    AgentBuildError,
    AgentProcess,
    AgentProtocolError,
    build_agent,
)
from sandboxd.engine.agent._build import CHECKS_DIR
from sandboxd.engine.agent._protocol import (
    MAX_REPLY_PAYLOAD,
    MAX_STATUS,
    PROTOCOL,
    STDIN_CHUNK,
    Frame,
    FrameDecoder,
    Reply,
    RunFlag,
    run_command,
    stdin_frames,
)
from sandboxd.engine.oci import NOBODY


def test_run_command_layout() -> None:
    """A run frame: counts, uid, gid and flags, then arguments, environment and working directory."""
    frame = run_command(["python3", "main.py"], {"A": "1"}, cwd="/workspace", uid=65534, gid=65534)
    kind, size = struct.unpack(">cI", frame[:5])
    assert (kind, size) == (b"x", len(frame) - 5)
    assert struct.unpack(">IIIII", frame[5:25]) == (2, 1, 65534, 65534, 0)
    assert frame[25:] == b"python3\0main.py\0A=1\0/workspace\0"


def test_run_command_carries_the_status_pipe_flag() -> None:
    """Asking for a status pipe sets flag bit 0 and nothing else."""
    frame = run_command(["a"], {}, cwd="/", uid=1, gid=1, flags=RunFlag.STATUS_PIPE)
    assert struct.unpack(">I", frame[21:25]) == (1,)


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
    stream = _reply(b"r", PROTOCOL) + _reply(b"o", b"hello\n") + _reply(b"x", b"\0\0\0\3")
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
        (struct.pack(">cI", b"s", MAX_STATUS + 1), "STATUS frame of"),
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


async def test_a_status_frame_is_kept_only_for_a_process_with_a_status_pipe() -> None:
    """A process with a status pipe keeps its one STATUS frame; one without refuses any."""
    with_pipe = AgentProcess(1024, lambda: None, status_pipe=True)
    assert with_pipe.status == b""
    with_pipe._receive(Frame(Reply.STATUS, b"syntax"))
    assert with_pipe.status == b"syntax"
    with pytest.raises(AgentProtocolError, match="STATUS"):
        with_pipe._receive(Frame(Reply.STATUS, b"again"))
    with pytest.raises(AgentProtocolError, match="STATUS"):
        AgentProcess(1024, lambda: None)._receive(Frame(Reply.STATUS, b"syntax"))


def test_the_checks_are_built_beside_the_agent(tmp_path: Path) -> None:
    """The agent's directory holds the shipped syntax checks, readable by the program's user."""
    checks = build_agent(tmp_path) / CHECKS_DIR
    names = {path.name for path in checks.iterdir()}
    assert {"python.py", "ruby.rb", "SandboxdSyntaxCheck.pm"} <= names
    assert checks.stat().st_mode & 0o777 == 0o755
    assert {path.stat().st_mode & 0o777 for path in checks.iterdir()} == {0o644}


def _run_in_agent(agent: Path, script: str, flags: RunFlag) -> list[Frame]:
    """The frames the agent, run on this host, answers to one ``sh -c script`` (as nobody)."""
    command = run_command(
        ["/bin/sh", "-c", script], {"PATH": "/usr/bin:/bin"}, cwd="/", uid=NOBODY, gid=NOBODY, flags=flags
    )
    done = subprocess.run(
        [str(agent / AGENT_NAME)], input=command + b"".join(stdin_frames(b"")), capture_output=True,
        timeout=30, check=True,
    )  # fmt: skip
    frames = FrameDecoder().feed(done.stdout)
    assert frames[0] == Frame(Reply.READY, PROTOCOL)
    return frames[1:]


def test_the_agent_forwards_the_status_pipe_before_the_exit(tmp_path: Path) -> None:
    """With the flag, what the process writes to fd 3 comes back (up to MAX_STATUS bytes) before its exit."""
    agent = build_agent(tmp_path)
    frames = _run_in_agent(agent, "printf syntax >&3; exit 1", RunFlag.STATUS_PIPE)
    assert [(f.kind, f.payload) for f in frames[:-1]] == [(Reply.STATUS, b"syntax")]
    assert frames[-1].exit_status() == 1
    long = _run_in_agent(agent, "head -c 1000 /dev/zero >&3", RunFlag.STATUS_PIPE)
    assert [(f.kind, len(f.payload)) for f in long] == [(Reply.STATUS, MAX_STATUS), (Reply.EXITED, 4)]
    silent = _run_in_agent(agent, "exec 3>&-; echo ran", RunFlag.STATUS_PIPE)
    assert [f.kind for f in silent] == [Reply.STDOUT, Reply.EXITED]


def test_without_the_flag_fd_3_is_closed(tmp_path: Path) -> None:
    """A process started without a status pipe has no fd 3 to write to, and no STATUS frame comes."""
    frames = _run_in_agent(build_agent(tmp_path), "printf syntax >&3", RunFlag.NONE)
    assert {f.kind for f in frames[:-1]} == {Reply.STDERR}
    assert frames[-1].exit_status() != 0
