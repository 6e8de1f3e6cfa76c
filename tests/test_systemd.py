"""The systemd unit, tmpfiles entry and example configuration, and the notify protocol of a real daemon."""

from __future__ import annotations

import asyncio
import configparser
import itertools
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandboxd.config import load_config
from tests.daemons import Daemon

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "sandboxd.service"


def unit() -> configparser.ConfigParser:
    """The unit file, parsed (systemd's syntax is INI-like enough for the keys checked here)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_verifies() -> None:
    """`systemd-analyze verify` accepts the unit as shipped."""
    done = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_unit_settings() -> None:
    """Type=notify with a watchdog, ordered after and requiring containerd, restarted on failure."""
    parsed = unit()
    assert parsed["Unit"]["Requires"] == "containerd.service"
    assert "containerd.service" in parsed["Unit"]["After"]
    service = parsed["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert service["WatchdogSec"] == "30s"
    assert service["ExecStart"].endswith("--config /etc/sandboxd/config.toml serve")
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["NoNewPrivileges"] == "yes"
    for namespacing in ("PrivateTmp", "ProtectSystem", "ProtectHome", "ReadWritePaths"):
        assert namespacing not in service, f"{namespacing} would hide workspaces from containerd"


def test_tmpfiles_creates_the_directories(tmp_path: Path) -> None:
    """The tmpfiles.d entry creates /run/sandboxd and /var/lib/sandboxd with mode 0700."""
    entry = ROOT / "systemd" / "sandboxd.tmpfiles.conf"
    done = subprocess.run(
        ["systemd-tmpfiles", "--create", f"--root={tmp_path}", str(entry)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for directory in ("run/sandboxd", "var/lib/sandboxd"):
        assert (tmp_path / directory).stat().st_mode & 0o777 == 0o700


def test_example_configuration_is_valid() -> None:
    """The example /etc/sandboxd/config.toml loads, with the documented defaults."""
    config = load_config(ROOT / "systemd" / "config.example.toml", {})
    assert (config.server.port, config.health.address) == (8002, "127.0.0.1:8003")
    assert config.limits.rate_limit == 600


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket listening as systemd's NOTIFY_SOCKET would."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.setblocking(False)
    yield listener
    listener.close()


async def messages_until(listener: socket.socket, wanted: str, seconds: float) -> list[str]:
    """Collect notifications until one contains ``wanted``."""
    loop = asyncio.get_running_loop()
    received: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(loop.sock_recv(listener, 4096), deadline - time.monotonic())
        except TimeoutError:
            break
        received.append(data.decode())
        if wanted in received[-1]:
            return received
    raise AssertionError(f"no {wanted!r} within {seconds} s; got {received}")


@pytest.mark.integration
async def test_notify_protocol(
    make_daemon: Callable[[int], Daemon], notify_socket: socket.socket, tmp_path: Path
) -> None:
    """STATUS while starting, READY=1 once listening, WATCHDOG=1 twice a period, STOPPING=1 at SIGTERM."""
    daemon = make_daemon(1)
    daemon.environment = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"}
    await daemon.start()
    starting = await messages_until(notify_socket, "READY=1", 30)
    assert any(m.startswith("STATUS=connecting to containerd") for m in starting)
    assert "STATUS=serving on 127.0.0.1:" in starting[-1]
    assert "runtimes available" in starting[-1]
    pinged = []
    for _ in range(6):
        assert (await messages_until(notify_socket, "WATCHDOG=1", 10))[-1] == "WATCHDOG=1"
        pinged.append(time.monotonic())
    gaps = sorted(later - earlier for earlier, later in itertools.pairwise(pinged))
    # Twice a period of 2 s is a ping a second: the median gap holds even if a loaded machine delays one.
    assert gaps[len(gaps) // 2] < 2, gaps
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGTERM)
    stopping = await messages_until(notify_socket, "STOPPING=1", 30)
    assert stopping[-1].startswith("STOPPING=1")
    assert await asyncio.wait_for(daemon.process.wait(), 60) == 0
