"""Hostile programs: each ends with a truthful status, the daemon stays healthy, and nothing leaks.

Every test runs its case through the HTTP API against real containerd and runsc,
then checks that the next execution is normal and that no sandboxd resource remains.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from sandboxd.config import Config
from sandboxd.containerd import ContainerdClient
from sandboxd.engine.engine import Engine
from tests.helpers import (
    REQUEST_SLACK,
    SLACK,
    Client,
    assert_nothing_left,
    leftovers_of,
    run,
    shipped_runtimes,
)

PIDS_LIMIT = 64  # runtimes/python.toml
GO_MEMORY_BOMB = """package main

func main() {
	var keep [][]byte
	for {
		b := make([]byte, 32<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		keep = append(keep, b)
	}
}
"""
# Each allocates 32 MiB a step and touches every page, so the sandbox's limit comes in a second.
MEMORY_BOMBS = {
    "python": "chunks = []\nwhile True:\n    chunks.append(bytearray(32 << 20))",
    # Buffers live outside V8's heap, whose own limit is about the sandbox's: no GC thrashing near it.
    "javascript": "const kept = [];\nfor (;;) kept.push(Buffer.alloc(32 << 20, 1));",
    "go": GO_MEMORY_BOMB,
    "ruby": "a = []\nloop { a << ('x' * (32 << 20)) }",
}


@pytest.fixture
async def recovers(
    http: Client, headers: dict[str, str], engine: Engine, containerd: ContainerdClient, config: Config
) -> Any:
    """After the case: the daemon answers, the next execution is normal, and nothing is left."""
    yield
    health = await http.get("/healthz")
    assert health.status == 200
    after = await run(http, headers, "print('next run is normal')")
    assert (after["status"], after["stdout"]) == ("completed", "next run is normal\n")
    await assert_nothing_left(engine, containerd, config)


pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("recovers")]


async def test_fork_bomb(http: Client, headers: dict[str, str]) -> None:
    """Processes forking without end run out of memory or time; they never bring the sandbox down."""
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = await run(http, headers, code, timeout=5)
    assert result["status"] in ("memory_limit", "timeout"), result
    assert result["exit_code"] == -1


async def test_process_limit(http: Client, headers: dict[str, str]) -> None:
    """Forking fails with EAGAIN once the sandbox holds its limit of processes."""
    # Each child becomes a small sleep: sixty Python interpreters touching their copy of the
    # parent's memory would reach the memory limit (as sandboxd answers too) before the process one.
    code = (
        "import os\nn = 0\nwhile True:\n    try:\n"
        "        if os.fork() == 0:\n            os.execv('/bin/sleep', ['sleep', '30'])\n        n += 1\n"
        "    except OSError as error:\n        print(error.errno, n)\n        break"
    )
    result = await run(http, headers, code, timeout=10)
    assert result["status"] == "completed"
    errno, forked = map(int, result["stdout"].split())
    assert errno == 11
    assert forked + 2 <= PIDS_LIMIT  # the program itself and the agent are processes of the sandbox too


async def test_program_cannot_reach_the_agent(http: Client, headers: dict[str, str]) -> None:
    """The agent (the sandbox's init, root inside) is out of the program's reach: no signal, fd or memory."""
    code = (
        "import errno, os\n"
        "attempts = [lambda: os.kill(1, 9), lambda: os.open('/proc/1/fd/1', os.O_WRONLY),\n"
        "            lambda: os.open('/proc/1/mem', os.O_RDONLY), lambda: os.setuid(0)]\n"
        "for attempt in attempts:\n"
        "    try:\n        attempt()\n        print('reached')\n"
        "    except OSError as error:\n        print(errno.errorcode[error.errno])\n"
    )
    result = await run(http, headers, code)
    assert result["status"] == "completed", result
    assert result["stdout"].split() == ["EPERM", "EACCES", "EACCES", "EPERM"], result


async def test_killing_every_process_it_can(http: Client, headers: dict[str, str]) -> None:
    """`kill -9 -1` reaches the program's children but not the agent: the result still comes back whole."""
    code = (
        "import os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(30)\n    os._exit(0)\n"
        "os.kill(-1, 9)\n_, status = os.waitpid(pid, 0)\nprint(os.WTERMSIG(status))\nprint('after')"
    )
    result = await run(http, headers, code)
    assert (result["status"], result["exit_code"], result["stdout"]) == ("completed", 0, "9\nafter\n"), result


async def test_thread_bomb(http: Client, headers: dict[str, str]) -> None:
    """Threads count against the same limit: creating them fails before the limit is passed."""
    code = (
        "import threading, time\nn = 0\ntry:\n    while True:\n"
        "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        n += 1\n"
        "except RuntimeError:\n    print(n)"
    )
    result = await run(http, headers, code, timeout=10)
    assert result["status"] == "completed"
    assert 0 < int(result["stdout"]) < PIDS_LIMIT


@pytest.mark.parametrize("language", MEMORY_BOMBS)
async def test_memory_bomb(http: Client, headers: dict[str, str], language: str) -> None:
    """Allocating without end ends with status memory_limit in every language."""
    # The first sandbox to run a runtime since its files were last read is charged for the page
    # cache they fill. At its memory limit the kernel then evicts and rereads the running program's
    # own code rather than kill it, until the timeout ends it (seen after 30 s on a fresh machine).
    # A sandbox before it reads them first, as one has for every execution but a runtime's first.
    runtime = shipped_runtimes().get(language)
    assert runtime is not None
    warm_up = await run(http, headers, runtime.conformance.hello, language=language)
    assert warm_up["stdout"] == "hello\n", warm_up
    result = await run(http, headers, MEMORY_BOMBS[language], language=language, timeout=30)
    assert (result["status"], result["exit_code"]) == ("memory_limit", -1), result
    assert "sandboxd: memory limit of" in result["stderr"]
    assert "waiting on pid" not in result["stderr"]


@pytest.mark.parametrize(("stream", "command"), [("stdout", "yes"), ("stderr", "yes >&2")])
async def test_runaway_output(http: Client, headers: dict[str, str], stream: str, command: str) -> None:
    """`yes` on either stream is cut off at the limit with status output_limit."""
    code = f"import os\nos.execvp('sh', ['sh', '-c', {command!r}])"
    result = await run(http, headers, code, timeout=10)
    assert (result["status"], result["exit_code"]) == ("output_limit", -1)
    note = "sandboxd: output limit of 1048576 bytes per stream exceeded; output truncated\n"
    flood = result[stream].replace(note, "")
    assert len(flood) == 1 << 20
    assert set(flood) == {"y", "\n"}


@pytest.mark.parametrize(("directory", "errnos"), [("/workspace", {28, 27}), ("/tmp", {28, 27})])
async def test_disk_fill(http: Client, headers: dict[str, str], directory: str, errnos: set[int]) -> None:
    """Filling /workspace or /tmp stops with ENOSPC or EFBIG, inside the sandbox only."""
    code = (
        f"f = open('{directory}/fill', 'wb')\nwritten = 0\ntry:\n    while True:\n"
        "        f.write(b'x' * (1 << 20))\n        f.flush()\n        written += 1\n"
        "except OSError as error:\n    print(error.errno, written)"
    )
    result = await run(http, headers, code, timeout=20)
    assert result["status"] == "completed", result
    errno, written = map(int, result["stdout"].split())
    assert errno in errnos
    assert written <= 64


async def test_nothing_persists_between_runs(http: Client, headers: dict[str, str]) -> None:
    """What one run writes to /tmp, /dev/shm, /var/tmp and /workspace, the next one does not see."""
    places = ["/tmp", "/dev/shm", "/var/tmp", "/workspace"]
    write = "\n".join(f"open('{p}/left-behind', 'w').write('secret')" for p in places)
    first = await run(http, headers, write + "\nprint('written')")
    assert first["stdout"] == "written\n"
    read = f"import os\nprint([p for p in {places!r} if os.path.exists(p + '/left-behind')])"
    second = await run(http, headers, read)
    assert second["stdout"] == "[]\n"


async def test_network_is_loopback_only(http: Client, headers: dict[str, str]) -> None:
    """Only the sandbox's own loopback exists: the daemon's port and other loopback ports are closed."""
    port = http.server.port
    code = (
        "import socket\nprint(socket.if_nameindex())\n"
        f"for port in ({port}, 22, 80, 8002):\n"
        "    try:\n        socket.create_connection(('127.0.0.1', port), timeout=2)\n"
        "        print('open', port)\n"
        "    except OSError:\n        print('closed', port)\n"
        "try:\n    socket.getaddrinfo('sandboxd-test.invalid', 80)\n    print('resolved')\n"
        "except OSError:\n    print('no resolution')"
    )
    result = await run(http, headers, code, timeout=20)
    assert result["stdout"].splitlines() == [
        "[(1, 'lo')]", f"closed {port}", "closed 22", "closed 80", "closed 8002", "no resolution",
    ]  # fmt: skip


async def test_host_secrets_stay_out(
    http: Client, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's environment, the host's /etc/shadow and the host's /proc/1/environ are out of reach."""
    marker = "sandboxd-secret-marker-do-not-leak"
    monkeypatch.setenv("SANDBOXD_TEST_SECRET", marker)
    code = (
        "import os\nprint(sorted(os.environ))\n"
        "for path in ('/etc/shadow', '/proc/1/environ'):\n    try:\n        print(path, open(path).read())\n"
        "    except OSError as error:\n        print(path, type(error).__name__)"
    )
    result = await run(http, headers, code, environment={"MINE": "1"})
    assert marker not in result["stdout"]
    names = result["stdout"].splitlines()[0]
    assert names == "['HOME', 'LANG', 'MINE', 'PATH', 'PYTHONDONTWRITEBYTECODE', 'PYTHONPATH']"
    host_shadow_start = Path("/etc/shadow").read_text().split(":")[0] + ":"
    assert f"/etc/shadow {host_shadow_start}" not in result["stdout"]


@pytest.mark.parametrize("timeout", [None, 2])
async def test_daemonized_child_goes_with_the_sandbox(
    http: Client,
    headers: dict[str, str],
    engine: Engine,
    containerd: ContainerdClient,
    config: Config,
    timeout: int | None,
) -> None:
    """A setsid double-forked child still running when the program ends (or times out) is gone with it."""
    code = (
        "import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        sys.stdout.close(); sys.stderr.close()\n        time.sleep(300)\n    os._exit(0)\n"
        + ("time.sleep(60)\n" if timeout else "print('parent done')\n")
    )
    started = time.monotonic()
    result = await run(http, headers, code, timeout=timeout)
    assert result["status"] == ("timeout" if timeout else "completed")
    assert time.monotonic() - started < (timeout or 0) + REQUEST_SLACK  # the child sleeps 300 s
    assert (await leftovers_of(engine, containerd, config)).tasks == []


async def test_long_sleep_is_cut_at_the_timeout(http: Client, headers: dict[str, str]) -> None:
    """Sleeping far past the timeout ends as a timeout at the timeout."""
    started = time.monotonic()
    result = await run(http, headers, "import time\ntime.sleep(600)", timeout=2)
    assert (result["status"], result["exit_code"]) == ("timeout", -1)
    assert 2 <= result["execution_time"] < 2 + SLACK
    assert time.monotonic() - started < 2 + REQUEST_SLACK


async def test_binary_output_stays_valid_json(http: Client, headers: dict[str, str]) -> None:
    """Every byte value on stdout comes back as valid JSON (invalid UTF-8 as U+FFFD)."""
    code = "import sys\nsys.stdout.buffer.write(bytes(range(256)) * 4)"
    result = await run(http, headers, code)
    assert result["status"] == "completed"
    assert result["stdout"].startswith("".join(map(chr, range(128))))
    assert "\ufffd" in result["stdout"]


async def test_planted_symlinks_are_never_followed(
    http: Client, headers: dict[str, str], tmp_path: Path
) -> None:
    """Symlinks the program plants in /workspace, to host paths, are never followed by the daemon."""
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("untouched")
    code = (
        "import os\n"
        f"os.symlink({str(sentinel)!r}, '/workspace/to-sentinel')\n"
        "os.symlink('/etc/passwd', '/workspace/to-passwd')\n"
        "os.unlink('/workspace/main.py')\n"
        f"os.symlink({str(sentinel)!r}, '/workspace/main.py')\n"
        "os.mkdir('/workspace/dir')\nos.symlink('/', '/workspace/dir/root')\n"
        "print(sorted(os.listdir('/workspace')))"
    )
    passwd_before = Path("/etc/passwd").stat()
    result = await run(http, headers, code)
    assert result["stdout"] == "['dir', 'main.py', 'to-passwd', 'to-sentinel']\n"
    assert sentinel.read_text() == "untouched"
    after = Path("/etc/passwd").stat()
    assert (after.st_mtime_ns, after.st_size) == (passwd_before.st_mtime_ns, passwd_before.st_size)


async def test_setuid_binaries_gain_nothing(http: Client, headers: dict[str, str]) -> None:
    """A setuid-root program in the image still runs as uid 65534, with no capabilities."""
    code = (
        "import ctypes, os, subprocess, time\n"
        "print('no_new_privs', ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))\n"
        "assert os.stat('/usr/bin/su').st_mode & 0o4000 and os.stat('/usr/bin/su').st_uid == 0\n"
        "su = subprocess.Popen(['/usr/bin/su', 'root'], stdin=subprocess.PIPE, stdout=subprocess.PIPE,"
        " stderr=subprocess.PIPE)\n"
        "time.sleep(1)\n"
        "for line in open(f'/proc/{su.pid}/status'):\n"
        "    if line.startswith(('Uid:', 'CapEff:')):\n"
        "        print(' '.join(line.split()))\n"
        "su.kill()"
    )
    result = await run(http, headers, code, timeout=10)
    assert result["stdout"].splitlines() == [
        "no_new_privs 1",
        "Uid: 65534 65534 65534 65534",
        "CapEff: 0000000000000000",
    ], result


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", 137),
        ("import ctypes\nctypes.string_at(0)", 139),
    ],
)
async def test_self_inflicted_signals(
    http: Client, headers: dict[str, str], code: str, exit_code: int
) -> None:
    """A program killing itself is reported as it happened: completed, exit status 128 + signal."""
    result = await run(http, headers, code)
    assert (result["status"], result["exit_code"]) == ("completed", exit_code)


async def test_twenty_parallel_requests(http: Client, headers: dict[str, str]) -> None:
    """Twenty requests at once all succeed, each with its own output."""
    results = await asyncio.gather(*(run(http, headers, f"print({i} ** 2)") for i in range(20)))
    assert [r["stdout"] for r in results] == [f"{i**2}\n" for i in range(20)]
    assert {r["status"] for r in results} == {"completed"}
